"""``prepare``: for each dataset card, the files the harness reads, downloaded, verified and renamed into place.

Per dataset: every file (the split's index, its zips, the label map) already under its final name and valid is
kept; the others are downloaded to ``<file>.part`` (resumed when a ``.part`` is there) and checked on their own; then
the set is checked (entries, image count) and only then are the ``.part`` files renamed to their final names. So a
final name always holds a verified file; a ``.part`` holds a download to resume.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.cards import IMAGENET, DatasetCard, all_dataset_cards, get_dataset_card
from harness.core.errors import HarnessError
from harness.core.units import human_bytes
from harness.data.prepare.download import PART_SUFFIX, DownloadError, DownloadOptions, download, part_path
from harness.data.prepare.storage import OVERRIDE_HINT, file_url, public_url, resolve_storage_url
from harness.data.prepare.verify import IndexInfo, VerifyError, check_dataset, check_labelmap, check_zip, read_index

logger = logging.getLogger(__name__)


@dataclass
class PrepareOptions:
    storage_url: str | None = None  # None: HARNESS_DATA_URL, else the toolkit's container
    split: str = "test"
    download: DownloadOptions = field(default_factory=DownloadOptions)
    # Which source (harness.data.prepare.sources_run.SOURCE_CHOICES): "auto" = per dataset the most faithful that
    # answers. The library default stays the toolkit's container; the CLI's is auto unless --storage-url is given.
    source: str = "elevater"
    plan_only: bool = False  # say per dataset what would be fetched (source, files, bytes, fidelity); fetch nothing
    whole_zip: bool = False  # the re-host's server ignores Range requests: download the whole zip instead
    merge_gap: int = 1 << 20  # re-host members closer than this many bytes are fetched in one Range request


@dataclass
class DatasetOutcome:
    name: str
    status: str  # "downloaded", "present" (already complete), "skipped" (not requested: ImageNet), "failed"
    detail: str
    folder: Path | None = None
    downloaded: list[str] = field(default_factory=list)
    bytes_received: int = 0
    num_images: int | None = None
    source: str = ""  # the source used, in words: kind, repo@commit, fidelity ("": the plain --source elevater run)


@dataclass
class PrepareSummary:
    data_root: Path
    storage: str  # printable: no query string
    source: str  # "--storage-url", "HARNESS_DATA_URL" or "default"
    outcomes: list[DatasetOutcome] = field(default_factory=list)
    mode: str = "elevater"  # --source
    hub: str = ""  # the hub endpoint (sources other than the toolkit's container)
    notes: list[str] = field(default_factory=list)  # lines said once, before the per-dataset lines
    plan: list[Any] = field(default_factory=list)  # --plan-only: plan.PlanRow per dataset and source tried

    def by_status(self, status: str) -> list[DatasetOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[DatasetOutcome]:
        return self.by_status("failed")

    def lines(self) -> list[str]:
        if self.plan:
            return [f"prepare --plan-only: {self.data_root} (nothing downloaded)", *self.notes,
                    *(row.line() for row in self.plan)]
        ready = len(self.by_status("downloaded")) + len(self.by_status("present"))
        where = (f"from {self.storage} ({self.source})" if self.mode == "elevater" else
                 f"--source {self.mode} (hub {self.hub}; the toolkit's container {self.storage}, {self.source})")
        out = [f"prepare: {self.data_root} {where}: {ready} ready "
               f"({len(self.by_status('downloaded'))} downloaded, {len(self.by_status('present'))} already present), "
               f"{len(self.by_status('skipped'))} skipped, {len(self.failed)} failed"]
        out += self.notes
        out += [f"  {o.status:10s} {o.name}: {o.detail}" + (f" [{o.source}]" if o.source else "")
                for o in self.outcomes]
        return out


def imagenet_skip_message(card: DatasetCard) -> str:
    where = ", ".join(f"DATA_ROOT/{d}" for d in card.imagefolder_dirs)
    return (f"not downloaded under 'all' (ImageNet's licence: get it from image-net.org yourself). Ask for it by "
            f"name (--datasets {card.name}) if you may use the ELEVATER copy, or use a local ImageNet val folder of "
            f"synset folders: {where or 'DATA_ROOT/imagenet/val'} (e.g. DATA_ROOT/imagenet/val/n01440764/...), or "
            f"pass that folder itself as eval's --data-root")


def select_cards(datasets: str | Sequence[str] | None) -> tuple[list[DatasetCard], list[DatasetCard]]:
    """(cards to prepare, cards skipped). 'all' (the default) means every card but ImageNet-1K, which is prepared
    only when named; names are dataset cards (unknown names fail before anything is downloaded)."""
    if datasets is None:
        tokens = ["all"]
    else:
        items = [datasets] if isinstance(datasets, str) else list(datasets)
        tokens = [t.strip() for item in items for t in item.split(",") if t.strip()] or ["all"]
    chosen: dict[str, DatasetCard] = {}
    skipped: dict[str, DatasetCard] = {}
    named = {t for t in tokens if t != "all"}
    for token in tokens:
        cards = [c for c in all_dataset_cards()] if token == "all" else [get_dataset_card(token)]
        for card in cards:
            if token == "all" and card.name == IMAGENET and card.name not in named:
                skipped[card.name] = card
            else:
                chosen.setdefault(card.name, card)
    return list(chosen.values()), list(skipped.values())


def _files(card: DatasetCard, split: str) -> list[str]:
    spec = card.splits[split]
    names = [spec.index, *spec.files] + ([card.labelmap] if card.format == "iris" and card.labelmap else [])
    return list(dict.fromkeys(names))


class _Checked:
    """What the per-file checks learned about one dataset's files."""

    def __init__(self, card: DatasetCard, split: str):
        self.card, self.split = card, split
        self.index: IndexInfo | None = None
        self.zips: dict[str, frozenset[str]] = {}

    def check(self, name: str, path: Path) -> None:
        spec = self.card.splits[self.split]
        if name == spec.index:
            self.index = read_index(path, name, self.card.format)
        elif name.lower().endswith(".zip"):
            self.zips[name] = check_zip(path, name)
        elif name == self.card.labelmap:
            check_labelmap(path, name, self.card.num_classes)


@dataclass
class _Overall:
    """The overall progress bar (bytes; no percentage, file sizes are learnt as they come) and the file count."""
    bar: Any = None
    files_total: int = 0
    files_seen: int = 0

    def next_file(self, dataset: str) -> None:
        self.files_seen += 1
        if self.bar is not None:
            self.bar.set_description(f"{dataset} (file {self.files_seen} of {self.files_total})")


def prepare_dataset(session: Any, card: DatasetCard, data_root: Path, storage_url: str, opts: PrepareOptions,
                    overall: _Overall | None = None) -> DatasetOutcome:
    folder = data_root / card.root_folder
    checked = _Checked(card, opts.split)
    located: dict[str, Path] = {}
    outcome = DatasetOutcome(card.name, "present", "", folder=folder)
    verbose = logging.DEBUG if opts.download.progress else logging.INFO
    overall = overall or _Overall()
    for name in _files(card, opts.split):
        overall.next_file(card.name)
        final = folder / name
        if final.is_file():
            try:
                checked.check(name, final)
                located[name] = final
                part_path(final).unlink(missing_ok=True)  # a re-download of a valid file, interrupted: not needed
                logger.log(verbose, "%s: %s is present and valid", card.name, name)
                continue
            except VerifyError as exc:
                logger.info("%s: %s is present but invalid (%s): downloading it again", card.name, name, exc)
        url = file_url(storage_url, card.root_folder, name)
        logger.log(verbose, "%s: downloading %s", card.name, public_url(url))
        fetched = download(session, url, final, opts.download, overall.bar)
        part = part_path(final)
        try:
            checked.check(name, part)
        except VerifyError as exc:
            if exc.corrupt:
                part.unlink(missing_ok=True)
            raise
        resumed = f" (resumed at byte {fetched.resumed_from})" if fetched.resumed_from else ""
        logger.log(verbose, "%s: %s: %s%s", card.name, name, human_bytes(fetched.size), resumed)
        located[name] = part
        outcome.downloaded.append(name + (" (resumed)" if fetched.resumed_from else ""))
        outcome.bytes_received += fetched.received
    parts = [p.name for p in located.values() if p.name.endswith(PART_SUFFIX)]
    note = f"; the downloaded files stay as {', '.join(parts)}, not under their final names" if parts else ""
    assert checked.index is not None
    check_dataset(card, opts.split, checked.index, checked.zips, note)
    for name, path in located.items():
        if path.name.endswith(PART_SUFFIX):
            os.replace(path, folder / name)
    if parts:
        _fsync_dir(folder)
    outcome.num_images = checked.index.num_images
    if outcome.downloaded:
        outcome.status = "downloaded"
        outcome.detail = (f"{outcome.num_images} images; downloaded {', '.join(outcome.downloaded)} "
                          f"({human_bytes(outcome.bytes_received)}) into {folder}")
    else:
        outcome.detail = f"{outcome.num_images} images; already complete in {folder}, nothing downloaded"
    return outcome


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _failure(card: DatasetCard, folder: Path, exc: HarnessError) -> str:
    if isinstance(exc, DownloadError):
        text = str(exc)
        if exc.offline or exc.status is not None:  # unreachable or refused: another storage URL may help
            text += f" — {OVERRIDE_HINT}"
        parts = sorted(p.name for p in folder.glob(f"*{PART_SUFFIX}")) if folder.is_dir() else []
        if parts:
            text += f"; partial downloads stay as {', '.join(parts)} and the next run resumes them"
    elif isinstance(exc, VerifyError):
        text = str(exc)  # names the file
        if exc.corrupt:
            kept = "the old file stays as it was" if (folder / exc.file).is_file() else "nothing kept under its name"
            text += f"; {kept}, the next run downloads it again"
    else:
        text = str(exc)
    return " ".join(text.split())  # one line


def prepare(data_root: str | Path, datasets: str | Sequence[str] | None = None,
            options: PrepareOptions | None = None) -> PrepareSummary:
    """Download and verify the given dataset cards' files (default: all but ImageNet-1K) into ``data_root``."""
    import requests

    opts = options or PrepareOptions()
    storage_url, source = resolve_storage_url(opts.storage_url)
    data_root = Path(data_root).expanduser()
    if data_root.exists() and not data_root.is_dir():
        raise HarnessError(f"--data-root {data_root} is a file; pass the folder the datasets should go in.")
    cards, skipped = select_cards(datasets)
    lacking = [c.name for c in cards if opts.split not in c.splits]
    if lacking:
        raise HarnessError(f"Split '{opts.split}' is not in the card(s) {', '.join(lacking)}; their splits: "
                           f"{', '.join(sorted({s for c in cards for s in c.splits}))}. Pass --split test.")
    if opts.source != "elevater" or opts.plan_only:
        from harness.data.prepare.sources_all import prepare_sources

        return prepare_sources(data_root, cards, skipped, opts, storage_url, source)
    data_root.mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(data_root, public_url(storage_url), source)
    summary.outcomes += [DatasetOutcome(c.name, "skipped", imagenet_skip_message(c)) for c in skipped]
    overall = _Overall(files_total=sum(len(_files(c, opts.split)) for c in cards))
    if opts.download.progress:
        from tqdm.auto import tqdm

        overall.bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="overall: ", position=0,
                           dynamic_ncols=True, bar_format="{desc}{n_fmt}{unit} [{elapsed}, {rate_fmt}]")
    session = requests.Session()
    session.headers["User-Agent"] = "react-elevater-harness-prepare"
    try:
        for card in cards:
            folder = data_root / card.root_folder
            try:
                summary.outcomes.append(prepare_dataset(session, card, data_root, storage_url, opts, overall))
            except HarnessError as exc:
                line = _failure(card, folder, exc)
                logger.debug("%s failed: %s", card.name, line)
                summary.outcomes.append(DatasetOutcome(card.name, "failed", line, folder=folder))
                if isinstance(exc, DownloadError) and exc.offline and opts.download.tries > 1:
                    # The storage is unreachable: one quick try for each remaining dataset, not the full backoff.
                    opts = dataclasses.replace(opts, download=dataclasses.replace(opts.download, tries=1))
    finally:
        session.close()
        if overall.bar is not None:
            overall.bar.close()
    return summary
