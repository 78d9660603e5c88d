"""``prepare --source auto|elevater|elevater-rehost|clip-benchmark|hf-jsonl`` and ``--plan-only``: per dataset card,
the most faithful source that answers (or the one asked), fetched, checked on arrival, then moved under its final name.

Per dataset and source (``harness.data.sources``, most faithful first):

- ``elevater``: the toolkit's container (``run.prepare_dataset``; ``--storage-url``). It answers when its first file
  does (one quick request) or when its layout is already complete under DATA_ROOT.
- ``elevater-rehost``: ``OFA-Sys/chinese-clip-eval``'s ``ELEVATER_all.zip``; only the dataset's test members are read
  out of the remote zip (``rehost.RehostReader``) into ``DATA_ROOT/<org>/<repo>/<member>.zip``.
- ``clip-benchmark``: ``clip-benchmark/wds_<name>``: ``classnames.txt``, the templates, ``dataset_type.txt`` when
  there, ``<split>/nshards.txt`` and exactly the ``nshards`` shards it names, into ``DATA_ROOT/<org>/<repo>/`` (what
  ``hf download --local-dir`` leaves).
- ``hf-jsonl``: ``<split>.jsonl`` and only the images it names (``prepare.hf_jsonl``), e.g. hateful-memes.

Hub files are fetched at one resolved commit into ``DATA_ROOT/.harness-staging/<org>/<repo>/`` (``.part`` files,
resumed), each checked against the hub's size and sha256 — ``classnames.txt`` and ``dataset_type.txt`` first, checked
against the label rule before any shard is fetched; then the staged dataset is opened with the source's reader
in strict mode (nshards.txt and the shards, image count = the source's expected count, class names, the label rule's
bijection) and only if that passes are the files moved to their final names and ``.harness_source.json`` (the
download record: repo, resolved commit, files, datasets) written beside them, last. A file under its final name is
therefore always a whole, verified file; a hand download (``hf download``) is checked against the hub the same way.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from harness.cards import DatasetCard
from harness.core.errors import HarnessError
from harness.core.units import human_bytes
from harness.data.prepare.hub import OFFLINE_LINE, HubClient, HubError, RepoSnapshot, file_matches, offline
from harness.data.prepare.record import read_record, write_record

logger = logging.getLogger(__name__)

SOURCE_CHOICES = ("auto", "elevater", "elevater-rehost", "clip-benchmark", "hf-jsonl")
STAGING_DIR = ".harness-staging"
WDS_ROOT_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


class SourcePreparer:
    """One ``prepare`` run over hub sources: snapshots and the re-host zip opened once, reused across datasets."""

    def __init__(self, data_root: Path, opts: Any, storage_url: str, overall: Any = None,
                 elevater_prepare: Callable[..., Any] | None = None, session: Any = None):
        self.data_root, self.opts, self.storage_url = data_root, opts, storage_url
        self.overall, self.elevater_prepare, self.session = overall, elevater_prepare, session
        d = opts.download
        self.client = HubClient(progress=d.progress, tries=d.tries, backoff_s=d.backoff_s, overall=overall,
                                timeout_s=d.read_timeout_s, connect_timeout_s=d.connect_timeout_s)
        self.snapshots: dict[tuple[str, str | None, str | None], RepoSnapshot] = {}
        self.rehost_reader: Any = None
        self.rehost_error: HubError | None = None
        self.storage_down: str | None = None
        self.staging_root = data_root / STAGING_DIR

    # ---------------------------------------------------------------- choice
    def candidates(self, card: DatasetCard) -> list[Any]:
        from harness.data.sources import sources_for

        found = sources_for(card.name)
        if self.opts.source != "auto":
            found = [s for s in found if s.kind == self.opts.source]
        # a hub source holds one split (its ``split``): another --split is the toolkit's container's alone
        return [s for s in found if s.kind == "elevater" or held_split(s) == self.opts.split]

    def snapshot(self, repo: str, revision: str | None, under: str | None = None,
                 paths: list[str] | None = None) -> RepoSnapshot:
        key = (repo, revision, under or (",".join(paths) if paths else None))
        if key not in self.snapshots:
            self.snapshots[key] = self.client.snapshot(repo, revision, under=under, paths=paths)
        return self.snapshots[key]

    def rehost(self, source: Any) -> Any:
        from harness.data.prepare.rehost import REHOST_FILE, RehostReader

        if self.rehost_error is not None:
            raise self.rehost_error
        if self.rehost_reader is None:
            try:
                snap = self.snapshot(source.repo, source.revision, paths=[REHOST_FILE])
                # --plan-only never downloads: without ranges it says so instead of fetching the whole zip
                self.rehost_reader = RehostReader(self.client, snap, self.staging_root / source.repo,
                                                  whole_zip=self.opts.whole_zip and not self.opts.plan_only,
                                                  merge_gap=self.opts.merge_gap,
                                                  final_dir=source.local_dir(self.data_root))
            except HubError as exc:
                self.rehost_error = exc
                raise
        return self.rehost_reader

    # ---------------------------------------------------------------- presence
    def present(self, card: DatasetCard, source: Any) -> bool:
        """The source's copy is complete under DATA_ROOT (a record of ours that names the dataset, files in place)."""
        from harness.data.sources import rehost_places

        if source.kind == "elevater":
            return self.hand_download(card, source)
        folder = source.local_dir(self.data_root)
        record = read_record(folder)
        if card.name not in record.get("datasets", []):
            return False
        if source.revision and record.get("revision") != source.revision:  # the sources data pins another commit
            return False
        if source.kind == "elevater-rehost":
            return any(p.exists() for p in rehost_places(source, self.data_root))
        for path, meta in record.get("files", {}).items():
            f = folder / path
            if not f.is_file() or f.stat().st_size != meta.get("size"):
                return False
        return True

    def hand_download(self, card: DatasetCard, source: Any) -> bool:
        """The source's layout is under DATA_ROOT (whoever put it there)."""
        return self.hand_copy(card, source) is not None

    def hand_copy(self, card: DatasetCard, source: Any) -> Path | None:
        """Where the source's layout is under DATA_ROOT (whoever put it there), or None."""
        from harness.data.sources import present_sources

        return next((p for s, p in present_sources(card, self.data_root)[0]
                     if s.kind == source.kind and s.repo == source.repo), None)

    # ---------------------------------------------------------------- one dataset
    def prepare(self, card: DatasetCard) -> Any:
        from harness.data.prepare.run import DatasetOutcome

        tried: list[str] = []
        candidates = self.candidates(card)
        if not candidates:
            from harness.data.sources import sources_for

            kinds = ", ".join(s.kind for s in sources_for(card.name))
            return DatasetOutcome(card.name, "skipped", f"no {self.opts.source} source for this dataset (its "
                                                        f"sources: {kinds})")
        for i, source in enumerate(candidates):
            last = i == len(candidates) - 1
            try:
                outcome = self._prepare_from(card, source)
            except HarnessError as exc:
                line = " ".join(str(exc).split())
                if self.opts.source == "auto" and not last:
                    tried.append(f"{source.kind}: {line}")
                    logger.info("%s: %s does not answer (%s); trying the next source", card.name, source.kind, line)
                    continue
                detail = line + (f" (passed over: {'; '.join(tried)})" if tried else "")
                return DatasetOutcome(card.name, "failed", detail, folder=source.local_dir(self.data_root),
                                      source=_describe(source))
            if tried:
                outcome.detail += f" (more faithful sources passed over: {'; '.join(tried)})"
            return outcome
        raise AssertionError("unreachable")

    def _prepare_from(self, card: DatasetCard, source: Any) -> Any:
        from harness.data.prepare.run import DatasetOutcome

        if source.kind == "elevater":
            return self._elevater(card, source)
        folder = source.local_dir(self.data_root)
        if self.present(card, source):
            record = read_record(folder)
            return DatasetOutcome(card.name, "present", f"already complete in {folder} "
                                  f"({source.repo}@{str(record.get('revision', ''))[:8]}), nothing downloaded",
                                  folder=folder, source=_describe(source, record.get("revision")))
        location = self.hand_copy(card, source) if offline() or source.kind == "elevater-rehost" else None
        if location is not None:
            # a copy put there by hand: read strictly (counts, classes, the label rule); the hub is not asked
            from harness.data.sources import open_source

            try:
                data = open_source(card, source, self.data_root, strict=True, location=location)
            except HarnessError as exc:  # rerunning prepare would find the same copy: say what to remove
                raise HarnessError(f"the copy at {location} (not downloaded by prepare) fails the check: "
                                   f"{_without_remedy(exc, source)} Remove {location} and rerun prepare to download "
                                   f"{card.name} from {source.kind} again.") from exc
            why = "HF_HUB_OFFLINE" if offline() else "a hand download, not ours"
            return DatasetOutcome(card.name, "present", f"{len(data.labels)} images found in {data.location} and "
                                  f"read strictly (not checked against the hub: {why})", folder=folder,
                                  num_images=len(data.labels), source=_describe(source))
        if offline():
            raise HubError(OFFLINE_LINE, "offline")
        if source.kind == "elevater-rehost":
            return self._rehost(card, source)
        if source.kind == "hf-jsonl":
            from harness.data.prepare.hf_jsonl import prepare_hf_jsonl

            return prepare_hf_jsonl(self, card, source)
        return self._wds(card, source)

    @staticmethod
    def check_split_of(source: Any, split: str) -> None:
        """``--split`` other than a hub source's split: one line naming the flag (the source has no other split)."""
        if source.kind != "elevater" and split != (held := held_split(source)):
            raise HarnessError(f"--split {split}: the {source.kind} source of {source.dataset} ({source.repo}) "
                               f"holds only its '{held}' split{'' if held == source.split else f' (as {source.split})'}"
                               f"; pass --split {held}, or --source elevater for the toolkit's other splits.")

    def _elevater(self, card: DatasetCard, source: Any) -> Any:
        from harness.data.prepare.download import DownloadError

        if self.opts.source == "auto" and not self.hand_download(card, source):
            if offline():
                raise HubError(OFFLINE_LINE, "offline")
            self.probe_storage(card)
        try:
            outcome = self.elevater_prepare(self.session, card, self.data_root, self.storage_url, self.opts,
                                            self.overall)
        except DownloadError as exc:
            raise HarnessError(f"the toolkit's container: {exc}") from exc
        outcome.source = _describe(source)
        return outcome

    def probe_storage(self, card: DatasetCard) -> None:
        """One quick request for the card's index file; a HarnessError when the container does not answer."""
        import requests

        from harness.data.prepare.storage import file_url, public_url

        if self.storage_down is not None:  # no connection earlier in this run: not asked again per dataset
            raise HarnessError(self.storage_down)
        url = file_url(self.storage_url, card.root_folder, card.splits[self.opts.split].index)
        try:
            with self.session.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=(5, 10)) as resp:
                status = resp.status_code
        except requests.RequestException as exc:
            self.storage_down = f"the toolkit's container does not answer ({type(exc).__name__})"
            raise HarnessError(self.storage_down) from exc
        if status not in (200, 206):
            raise HarnessError(f"the toolkit's container answers HTTP {status} for {public_url(url)}")

    # ---------------------------------------------------------------- clip-benchmark
    def _wds_files(self, snap: RepoSnapshot, source: Any) -> tuple[list[str], str]:
        """The root files and the split's nshards.txt (the shards come after it is read)."""
        nshards = f"{source.split}/nshards.txt"
        if nshards not in snap.files:
            shards = sorted(p for p in snap.files if p.startswith(source.split + "/") and p.endswith(".tar"))
            raise LayoutError(f"{source.repo}/{nshards}: missing at {snap.short} ({len(shards)} .tar files in "
                              f"{source.split}/) — the shard count is read from it, never guessed; the repo is "
                              f"incomplete or its layout changed: use another --source, or add the file by hand "
                              f"with the number of shards and rerun")
        missing = [p for p in ("classnames.txt",) if p not in snap.files]
        if missing:
            raise LayoutError(f"{source.repo}/{missing[0]}: missing at {snap.short} — not a CLIP_benchmark "
                              f"webdataset repo")
        return [p for p in WDS_ROOT_FILES if p in snap.files], nshards

    def _wds(self, card: DatasetCard, source: Any) -> Any:
        from harness.data.prepare.run import DatasetOutcome
        from harness.data.sources import open_source

        snap = self.snapshot(source.repo, source.revision, under=source.split)
        roots, nshards = self._wds_files(snap, source)
        folder = source.local_dir(self.data_root)
        staged = self.staging_root / source.repo
        fetched: list[str] = []
        received = 0
        for path in roots:  # the class names and dataset type first: the label rule is checked before any shard
            received += self._stage(snap, path, folder, staged, fetched)
        from harness.data.sources import label_rule
        from harness.data.wds_split import check_label_files

        try:
            check_label_files(card, staged, label_rule(source.label_rule), "")
        except HarnessError as exc:
            raise LayoutError(f"{' '.join(str(exc).split())} Checked before any shard was downloaded: nothing was "
                              f"moved into {folder}; if the hub's copy itself differs, use another --source (or "
                              f"correct the label rule in the sources data).") from exc
        received += self._stage(snap, nshards, folder, staged, fetched)
        count = _read_nshards(staged / nshards, f"{source.repo}/{nshards}")
        shards = [f"{source.split}/{k}.tar" for k in range(count)]
        absent = [p for p in shards if p not in snap.files]
        if absent:
            raise LayoutError(f"{source.repo}/{nshards} says {count} shards but {absent[0]} is not in the repo at "
                              f"{snap.short} — the repo is incomplete; use another --source")
        for path in shards:
            received += self._stage(snap, path, folder, staged, fetched)
        wanted = roots + [nshards] + shards
        try:
            open_source(card, source, self.staging_root, strict=True, location=staged)
        except HarnessError as exc:
            raise LayoutError(f"{_without_remedy(exc, source)} Checked before anything was moved: nothing was moved "
                              f"into {folder}; the fetched files wait in {staged} (reused by the next run); if the "
                              f"hub's copy itself is wrong, use another --source.") from exc
        move_staged(staged, folder, wanted)
        files = {p: {"size": snap.files[p].size, "sha256": snap.files[p].sha256} for p in wanted}
        write_record(folder, source, snap, card.name, files)
        detail = (f"{source.expected_count} images from {snap.short} ({source.fidelity}); "
                  + (f"downloaded {len(fetched)} of {len(wanted)} files ({human_bytes(received)})"
                     if fetched else "the files were already there (checked against the hub)") + f" into {folder}")
        return DatasetOutcome(card.name, "downloaded" if fetched else "present", detail, folder=folder,
                              downloaded=fetched, bytes_received=received, num_images=source.expected_count,
                              source=_describe(source, snap.commit))

    def _stage(self, snap: RepoSnapshot, path: str, folder: Path, staged: Path, fetched: list[str]) -> int:
        """Put a verified copy of ``path`` at ``staged/path``: a link to the final file when it already matches the
        hub, a staged file from an earlier run, else a fetch. Returns the bytes received."""
        remote = snap.files[path]
        final, target = folder / path, staged / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and file_matches(target, remote):
            return 0
        target.unlink(missing_ok=True)
        if final.is_file() and file_matches(final, remote):
            try:
                os.link(final, target)
            except OSError:
                shutil.copy2(final, target)
            return 0
        if self.overall is not None:
            self.overall.set_description(f"{snap.repo}/{path}")
        got = self.client.fetch(snap, path, staged)
        os.replace(staged / (path + ".part"), target)
        fetched.append(path + (" (resumed)" if got.resumed_from else ""))
        return got.received

    # ---------------------------------------------------------------- re-host
    def _rehost(self, card: DatasetCard, source: Any) -> Any:
        from harness.data.prepare.run import DatasetOutcome
        from harness.data.sources import open_source

        reader = self.rehost(source)
        before = reader.transferred
        staged, plan = reader.fetch(source.member)
        folder = source.local_dir(self.data_root)
        try:
            data = open_source(card, source, self.staging_root, strict=True, location=staged)
        except HarnessError as exc:
            staged.unlink(missing_ok=True)
            raise HarnessError(f"{_without_remedy(exc, source)} The re-host's {source.member} was refused before "
                               f"anything was moved into {folder}; use --source clip-benchmark for it.") from exc
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(staged, folder / staged.name)
        received = reader.transferred - before
        write_record(folder, source, reader.snap, card.name,
                     {staged.name: {"size": (folder / staged.name).stat().st_size, "sha256": None,
                                    "members": len(plan.entries)}},
                     {"zip": {"path": reader.remote.path, "size": reader.remote.size,
                              "sha256": reader.remote.sha256}})
        detail = (f"{len(plan.entries)} members ({human_bytes(plan.bytes)}) of {reader.remote.path} at "
                  f"{reader.snap.short} ({source.fidelity}); {human_bytes(received)} transferred into "
                  f"{folder / staged.name}")
        return DatasetOutcome(card.name, "downloaded", detail, folder=folder, downloaded=[staged.name],
                              bytes_received=received, num_images=source.expected_count,
                              source=_describe(source, reader.snap.commit, data.source.get("fidelity")))


def move_staged(staged: Path, folder: Path, paths: list[str]) -> None:
    """The verified staged files to their final names (a final file already linked there stays), staging removed."""
    for path in paths:
        src, dst = staged / path, folder / path
        if src.is_file() and not (dst.is_file() and os.path.samefile(src, dst)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staged, ignore_errors=True)


def held_split(source: Any) -> str:
    """The ELEVATER split a hub source holds: its split folder (``test``), or for hf-jsonl, whose split is the source's
    own name (``dev_seen``), the card's evaluation split."""
    if source.kind != "hf-jsonl":
        return source.split
    from harness.cards import get_dataset_card

    return get_dataset_card(source.dataset).eval_split


class LayoutError(HarnessError):
    """The source answered but its files are not what the sources data describes (named in the message)."""


def _without_remedy(exc: BaseException, source: Any) -> str:
    """The reader's message without its "re-download with prepare" advice: prepare is what just ran."""
    return " ".join(str(exc).replace(source.remedy(), "").split())


def _read_nshards(path: Path, name: str) -> int:
    return _nshards_of(path.read_text(encoding="utf-8", errors="replace"), name)


def _nshards_of(text: str, name: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise LayoutError(f"{name}: holds {text[:40]!r}, expected one whole number of shards — the repo is "
                          f"damaged")
    return int(text)


def _describe(source: Any, commit: str | None = None, fidelity: str | None = None) -> str:
    """The source in words for the summary: kind, repo@commit (short), fidelity (as read, when known)."""
    if source.kind == "elevater":
        return f"elevater ({source.fidelity})"
    rev = (commit or source.revision or "")[:8]
    return f"{source.kind} {source.repo}{'@' + rev if rev else ''} ({fidelity or source.fidelity})"
