"""Checks on downloaded files, before they get their final names.

Per file: a zip opens (its central directory reads) and every entry passes its CRC check (``ZipFile.testzip``); an
index parses (iris text lines ``<zip>@<entry> <label>[,<label>]``, or a coco json with ``images``); a label map has
one class name a line, as many as the card has classes. Per dataset: every ``<zip>@<entry>`` the index names is in
one of the card's zips, and the index lists as many images as the card's ``splits.<split>.num_images``.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.cards import DatasetCard
from harness.data.testsets import parse_iris_line
from harness.core.errors import HarnessError
from harness.core.safe_read import parse_json, read_bounded_text


class VerifyError(HarnessError):
    """A downloaded file or set of files is not what the harness can read; ``file`` names the culprit."""

    def __init__(self, message: str, file: str, corrupt: bool):
        super().__init__(message)
        self.file = file
        self.corrupt = corrupt  # the bytes are bad (download again); False: whole files that disagree with the card


@dataclass
class IndexInfo:
    num_images: int
    entries: dict[str, set[str]] = field(default_factory=dict)  # zip name -> entries the index names
    plain: list[str] = field(default_factory=list)  # image paths without "zip@"


WEB_PAGE_HINT = "a login or captive portal? Check the URL in a browser, or point --storage-url at the container"


def web_page_evidence(head: bytes, content_type: str | None = None) -> str | None:
    """Why a body that should be a zip, an index or a label map is a web page instead (its Content-Type, or how
    its first bytes start), or None."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    for marker, shown in ((b"<!doctype html", "<!DOCTYPE html"), (b"<html", "<html")):
        if start.startswith(marker):
            return f"body starts with {shown}"
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml") and start.startswith(b"<"):
        return f"Content-Type {kind}"
    return None


def web_page_message(evidence: str) -> str:
    return f"the storage answered with a web page ({evidence}), not the file: {WEB_PAGE_HINT}"


def web_page(path: Path) -> str | None:
    """The web-page message for a file that holds an HTML page (what a portal answers with), or None."""
    try:
        with open(path, "rb") as f:
            evidence = web_page_evidence(f.read(512))
    except OSError:
        return None
    return web_page_message(evidence) if evidence else None


def check_zip(path: Path, name: str) -> frozenset[str]:
    """The zip's entry names, after a full CRC check of every entry."""
    page = web_page(path)
    if page:
        raise VerifyError(f"{name}: {page}", name, True)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = frozenset(zf.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise VerifyError(f"{name} is not a readable zip ({exc}) — a corrupt or truncated file", name, True) from exc
    if bad is not None:
        raise VerifyError(f"{name}: entry '{bad}' fails its CRC check — the zip is corrupt", name, True)
    return names


def _add_ref(info: IndexInfo, ref: str) -> None:
    if "@" in ref:
        zip_name, entry = ref.split("@", 1)
        info.entries.setdefault(zip_name, set()).add(entry)
    else:
        info.plain.append(ref)


def read_index(path: Path, name: str, fmt: str) -> IndexInfo:
    """Parse an iris or coco index as vision-datasets does; a parse failure is a VerifyError naming the line."""
    page = web_page(path)
    if page:
        raise VerifyError(f"{name}: {page}", name, True)
    try:
        text = read_bounded_text(path, "index")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or refused by type or size (safe_read)
        raise VerifyError(f"{name} is not a UTF-8 text index ({exc})", name, True) from exc
    info = IndexInfo(num_images=0)
    if fmt == "coco":
        try:
            images = parse_json(text, name, "index")["images"]
            refs = [str(img["file_name"]) for img in images]
        except (ValueError, KeyError, TypeError) as exc:
            raise VerifyError(f"{name} is not a coco index with images[].file_name ({type(exc).__name__}: {exc})",
                              name, True) from exc
        for ref in refs:
            _add_ref(info, ref)
        info.num_images = len(refs)
        return info
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            ref, _ = parse_iris_line(line, number, name)
        except HarnessError as exc:
            raise VerifyError(str(exc), name, True) from None
        _add_ref(info, ref)
        info.num_images += 1
    return info


def check_labelmap(path: Path, name: str, num_classes: int) -> None:
    page = web_page(path)
    if page:
        raise VerifyError(f"{name}: {page}", name, True)
    try:
        lines = [line.strip() for line in read_bounded_text(path, "label map").splitlines()]
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{name} is not a UTF-8 label map ({exc})", name, True) from exc
    n = sum(1 for line in lines if line)
    if n != num_classes:
        raise VerifyError(f"{name} names {n} classes but the card has {num_classes}", name, False)


def check_dataset(card: DatasetCard, split: str, index: IndexInfo, zips: dict[str, frozenset[str]],
                  part_note: str) -> None:
    """The index against the zips and the card: every entry present, the image count the card's."""
    spec = card.splits[split]
    for zip_name, entries in index.entries.items():
        if zip_name not in zips:
            raise VerifyError(f"the index {spec.index} refers to {zip_name}, which is not among the card's files "
                              f"({', '.join(spec.files)}){part_note}", spec.index, False)
        missing = entries - zips[zip_name]
        if missing:
            raise VerifyError(f"{len(missing)} of the {len(entries)} images {spec.index} names are not in {zip_name} "
                              f"(e.g. '{sorted(missing)[0]}'){part_note}", zip_name, False)
    if index.plain:
        raise VerifyError(f"the index {spec.index} names image files outside the zips (e.g. '{index.plain[0]}'), "
                          f"which the ELEVATER layout does not have{part_note}", spec.index, False)
    if spec.num_images and index.num_images != spec.num_images:
        where = card.path or f"{card.name}.yaml"
        raise VerifyError(
            f"the index {spec.index} lists {index.num_images} images but the card expects {spec.num_images} "
            f"(splits.{split}.num_images) — the storage holds another version of the dataset{part_note}; if this "
            f"version is what you want, put a copy of {where} with num_images: {index.num_images} in a folder named "
            f"in HARNESS_DATASET_CARDS and rerun (nothing is downloaded again)", spec.index, False)
