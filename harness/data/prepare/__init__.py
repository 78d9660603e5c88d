"""``python -m harness prepare``: download the ELEVATER test sets into the layout the harness reads.

Modules: ``storage`` (the toolkit's container URL, file URLs, URLs safe to print), ``download`` (one file: ``.part``,
Range resume, retries, progress), ``verify`` (zip CRCs, index parsing, entries and image count), ``run`` (datasets:
what to fetch, verify, rename into place, the summary). Hub sources (``--source auto|elevater-rehost|
clip-benchmark``, ``--plan-only``): ``sources_all`` (every dataset asked, the summary), ``sources_run`` (per dataset the
source, staging, the strict check, the move into place), ``hub`` (huggingface_hub: snapshots, resumable verified
fetches, one-line errors), ``remote_zip`` (a seekable file over HTTP Range), ``rehost`` (the asked members out of
``ELEVATER_all.zip``), ``plan`` (``--plan-only``), ``record`` (``.harness_source.json``).
"""
from __future__ import annotations

from harness.data.prepare.download import DownloadError, DownloadOptions
from harness.data.prepare.run import DatasetOutcome, PrepareOptions, PrepareSummary, prepare, select_cards
from harness.data.prepare.storage import DEFAULT_STORAGE_URL, STORAGE_ENV, file_url, public_url, resolve_storage_url
from harness.data.prepare.verify import VerifyError

__all__ = ["DEFAULT_STORAGE_URL", "STORAGE_ENV", "DatasetOutcome", "DownloadError", "DownloadOptions",
           "PrepareOptions", "PrepareSummary", "VerifyError", "file_url", "prepare", "public_url",
           "resolve_storage_url", "select_cards"]
