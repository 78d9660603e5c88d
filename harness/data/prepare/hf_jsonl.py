"""``prepare`` for an ``hf-jsonl`` source (harness.data.hf_jsonl): ``<split>.jsonl`` first, checked (every line, the
labels, the count) before any image is fetched; then exactly the images it names — not the repo's other splits or
images — each at the same resolved commit, resumed and checked against the hub's size and sha256 like every hub file
(``SourcePreparer._stage``); then the staged copy is opened strictly and only then moved to its final names under
``DATA_ROOT/<org>/<repo>/`` (what ``hf download --local-dir`` leaves), the download record written last. A gated repo
answers 401 on its files: the hub client's one-line gated message (accept the terms, set HF_TOKEN)."""
from __future__ import annotations

from typing import Any

from harness.core.errors import HarnessError
from harness.core.units import human_bytes
from harness.data.prepare.hub import RepoSnapshot
from harness.data.prepare.record import write_record
from harness.data.prepare.sources_run import LayoutError, _describe, _without_remedy, move_staged

PATHS_PER_REQUEST = 200  # paths-info requests stay small (the hub's form body)


def jsonl_snapshot(prep: Any, source: Any) -> tuple[RepoSnapshot, str]:
    """The repo at the source's revision with ``<split>.jsonl``'s metadata (a LayoutError when it is not there)."""
    jsonl = f"{source.split}.jsonl"
    snap = prep.snapshot(source.repo, source.revision, paths=[jsonl])
    if jsonl not in snap.files:
        raise LayoutError(f"{source.repo}/{jsonl}: not in the repo at {snap.short} — the repo's layout changed; use "
                          f"another --source")
    return snap, jsonl


def image_files(prep: Any, snap: RepoSnapshot, images: list[str], jsonl: str, where: str) -> dict:
    """The hub's metadata of every image the jsonl names, at the jsonl's commit; a LayoutError naming how many are
    not in the repo (the reader needs them all)."""
    files: dict = {}
    for k in range(0, len(images), PATHS_PER_REQUEST):
        files.update(prep.snapshot(snap.repo, snap.commit, paths=images[k:k + PATHS_PER_REQUEST]).files)
    absent = [p for p in images if p not in files]
    if absent:
        raise LayoutError(f"{snap.repo}: {len(absent)} of the {len(images)} images named by {jsonl} are not in the "
                          f"repo at {snap.short} (first: {absent[0]}) — the hub's copy is incomplete; {where}")
    return files


def prepare_hf_jsonl(prep: Any, card: Any, source: Any) -> Any:
    from harness.data.hf_jsonl import check_count, read_jsonl_split
    from harness.data.prepare.run import DatasetOutcome
    from harness.data.sources import open_source

    folder = source.local_dir(prep.data_root)
    staged = prep.staging_root / source.repo
    snap, jsonl = jsonl_snapshot(prep, source)
    fetched: list[str] = []
    received = prep._stage(snap, jsonl, folder, staged, fetched)
    try:
        entries = read_jsonl_split(staged / jsonl, len(source.label_names), "")
        check_count(entries, source, staged / jsonl, "", strict=True)
    except HarnessError as exc:
        raise LayoutError(f"{' '.join(str(exc).split())} Checked before any image was downloaded: nothing was moved "
                          f"into {folder}; if the hub's copy itself differs, use another --source.") from exc
    images = [e.img for e in entries]
    nothing = (f"nothing was moved into {folder}; put a complete copy there by hand (see docs/data.md), or use another "
               f"--source")
    files = image_files(prep, snap, images, jsonl, nothing)
    image_snap = RepoSnapshot(snap.repo, snap.repo_type, snap.requested, snap.commit, files)
    for path in images:
        received += prep._stage(image_snap, path, folder, staged, fetched)
    try:
        open_source(card, source, prep.staging_root, strict=True, location=staged)
    except HarnessError as exc:
        raise LayoutError(f"{_without_remedy(exc, source)} Checked before anything was moved: nothing was moved into "
                          f"{folder}; the fetched files wait in {staged} (reused by the next run).") from exc
    wanted = [jsonl, *images]
    move_staged(staged, folder, wanted)
    files = {**{p: files[p] for p in images}, jsonl: snap.files[jsonl]}
    write_record(folder, source, snap, card.name, {p: {"size": f.size, "sha256": f.sha256} for p, f in files.items()})
    detail = (f"{len(images)} images from {snap.short} ({source.fidelity}); "
              + (f"downloaded {len(fetched)} of {len(wanted)} files ({human_bytes(received)})"
                 if fetched else "the files were already there (checked against the hub)") + f" into {folder}")
    return DatasetOutcome(card.name, "downloaded" if fetched else "present", detail, folder=folder,
                          downloaded=fetched, bytes_received=received, num_images=len(images),
                          source=_describe(source, snap.commit))


def plan_hf_jsonl(prep: Any, card: Any, source: Any) -> tuple[str, int, int, str]:
    """(where, files, bytes, note) for --plan-only: the jsonl is read into memory (not saved), the images it names
    are sized from the hub's metadata; nothing is downloaded."""
    snap, jsonl = jsonl_snapshot(prep, source)
    from harness.data.hf_jsonl import read_jsonl_split

    text = prep.client.read_text(snap, jsonl, limit=snap.files[jsonl].size + 1)
    entries = read_jsonl_split(f"{source.repo}/{jsonl}", len(source.label_names), "", text=text)
    files = image_files(prep, snap, [e.img for e in entries], jsonl, "prepare would refuse it")
    note = f"{len(entries)} images named by {jsonl} (expected {source.expected_count})"
    return snap.short, 1 + len(files), snap.files[jsonl].size + sum(f.size for f in files.values()), note
