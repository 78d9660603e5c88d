"""``prepare --plan-only``: per dataset, the source ``auto`` (or ``--source``) would use, its files and bytes from the
hub's metadata (the re-host: the members of the dataset in the remote zip, from its central directory), its fidelity;
sources passed over are listed with why. Nothing is downloaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.cards import DatasetCard
from harness.core.errors import HarnessError
from harness.core.units import human_bytes
from harness.data.prepare.hub import OFFLINE_LINE, HubError, offline
from harness.data.prepare.sources_run import LayoutError, _nshards_of


@dataclass
class PlanRow:
    dataset: str
    kind: str
    where: str  # repo@commit8, or the container
    files: int | None
    bytes: int | None
    fidelity: str
    note: str = ""
    answers: bool = True  # False: the source was tried and does not answer (``note`` says why)

    def line(self) -> str:
        if not self.answers:
            return f"  {self.dataset}: {self.kind} ({self.fidelity}) does not answer: {self.note}"
        files = "?" if self.files is None else str(self.files)
        size = "size unknown" if self.bytes is None else human_bytes(self.bytes)
        note = f" — {self.note}" if self.note else ""
        return f"  {self.dataset}: {self.kind} {self.where}: {files} files, {size} — {self.fidelity}{note}"


def plan_rows(prep: Any, card: DatasetCard) -> list[PlanRow]:
    """The source auto (or --source) would use, with files/bytes from the hub's metadata; sources passed over
    are listed with why."""
    rows: list[PlanRow] = []
    candidates = prep.candidates(card)
    for i, source in enumerate(candidates):
        try:
            row = _plan(prep, card, source)
        except HarnessError as exc:
            line = " ".join(str(exc).split())
            if OFFLINE_LINE in line:
                line = "not checked (HF_HUB_OFFLINE)"
            rows.append(PlanRow(card.name, source.kind, "-", None, None, source.fidelity, line, answers=False))
            if prep.opts.source == "auto" and i < len(candidates) - 1:
                continue
            return rows
        rows.append(row)
        return rows
    if not candidates:
        rows.append(PlanRow(card.name, prep.opts.source, "-", 0, 0, "-", "no such source for this dataset"))
    return rows


def _plan(prep: Any, card: DatasetCard, source: Any) -> PlanRow:
    if source.kind == "elevater":
        from harness.data.prepare.run import _files

        present = prep.present(card, source)
        if not present and offline():
            raise HubError(OFFLINE_LINE, "offline")
        if not present:
            prep.probe_storage(card)
        return PlanRow(card.name, "elevater", "the toolkit's container", len(_files(card, prep.opts.split)), None,
                       source.fidelity, "already complete under DATA_ROOT" if present else "")
    if offline():
        raise HubError(OFFLINE_LINE, "offline")
    if source.kind == "hf-jsonl":
        from harness.data.prepare.hf_jsonl import plan_hf_jsonl

        where, files, size, note = plan_hf_jsonl(prep, card, source)
        note += ", already complete under DATA_ROOT" if prep.present(card, source) else ""
        return PlanRow(card.name, source.kind, where, files, size, source.fidelity,
                       note + (f"; caveat: {source.caveat}" if source.caveat else ""))
    if source.kind == "elevater-rehost":
        reader = prep.rehost(source)
        plan, _ = reader.plan(source.member)
        return PlanRow(card.name, source.kind, f"{reader.snap.short}:{reader.remote.path}", len(plan.entries),
                       plan.bytes, source.fidelity, f"members of a {human_bytes(reader.remote.size)} zip, read "
                                                    f"with Range requests")
    snap = prep.snapshot(source.repo, source.revision, under=source.split)
    roots, nshards = prep._wds_files(snap, source)
    count = _nshards_of(prep.client.read_text(snap, nshards), f"{source.repo}/{nshards}")  # read, not saved
    shards = [f"{source.split}/{k}.tar" for k in range(count)]  # exactly those prepare fetches
    absent = [p for p in shards if p not in snap.files]
    if absent:
        raise LayoutError(f"{source.repo}/{nshards} says {count} shards but {absent[0]} is not in the repo at "
                          f"{snap.short} — the repo is incomplete")
    paths = roots + [nshards] + shards
    note = f"{source.expected_count} images"
    if prep.present(card, source):
        note += ", already complete under DATA_ROOT"
    if source.caveat:
        note += f"; caveat: {source.caveat}"
    return PlanRow(card.name, source.kind, snap.short, len(paths), sum(snap.files[p].size for p in paths),
                   source.fidelity, note)
