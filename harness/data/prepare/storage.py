"""Where the ELEVATER files live: the toolkit's storage container, the URL of one file, and URLs safe to print.

The default container is a fact taken from the ELEVATER toolkit (Elevater_Toolkit_IC,
``vision_benchmark/common/constants.py``: ``VISION_DATASET_STORAGE``, an Azure blob container URL carrying a
read-only SAS query string). vision-datasets, which the toolkit downloads with, forms a file's URL by appending
``<root_folder>/<file>`` to the container's path and keeping its query string: ``<base>/<root_folder>/<file>?<query>``
(``DatasetDownloader._download_files``). The file names and root folders are the dataset cards' (the toolkit's hub
JSON ``resources/datasets/vision_datasets.json``).

Which container is used, first match wins: ``--storage-url``, then the environment variable ``HARNESS_DATA_URL``,
then the toolkit's default.
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

from harness.core.errors import HarnessError

DEFAULT_STORAGE_URL = (
    "https://cvinthewildeus.blob.core.windows.net/datasets?sp=r&st=2023-08-28T01:41:20Z&se=3023-08-28T09:41:20Z"
    "&sv=2022-11-02&sr=c&sig=Msoq5dIl%2Fve6F01edGr8jgcZUt7rtsuJ896xvstSNfM%3D")
STORAGE_ENV = "HARNESS_DATA_URL"
OVERRIDE_HINT = (f"point --storage-url or {STORAGE_ENV} at a container URL that works "
                 f"(flag > env > the toolkit's default)")

_QUERY = re.compile(r"\?[^\s'\"<>)]*")


def resolve_storage_url(flag: str | None = None) -> tuple[str, str]:
    """(container URL, where it came from: '--storage-url', 'HARNESS_DATA_URL' or 'default'), validated."""
    env = os.environ.get(STORAGE_ENV, "").strip()
    if flag:
        url, source = flag.strip(), "--storage-url"
    elif env:
        url, source = env, STORAGE_ENV
    else:
        url, source = DEFAULT_STORAGE_URL, "default"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HarnessError(f"The storage URL from {source} must be an http(s) URL of the container holding "
                           f"<root_folder>/<file> (e.g. https://account.blob.core.windows.net/datasets?<SAS>), got "
                           f"'{public_url(url)}'.")
    return url, source


def file_url(storage_url: str, root_folder: str, name: str) -> str:
    """``<base>/<root_folder>/<name>?<query>`` — the query string (a SAS signature) stays on every file's URL."""
    parts = urlsplit(storage_url)
    path = "/".join([parts.path.rstrip("/"), quote(root_folder.strip("/")), quote(name)])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def public_url(url: str) -> str:
    """The URL without its query string, fragment or credentials: what may be printed and logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str) -> str:
    """Any text (an exception's message) with query strings cut off every URL in it."""
    return _QUERY.sub("?…", text)
