"""Where a pairs folder keeps what: the one place that names its files.

``DIR/<parquet>`` (fetched), ``DIR/fetched.json`` (what fetch got), ``DIR/download_state.json`` (rounds of
img2dataset: the source parquet, shard size, each round's first shard), ``DIR/shards/`` (img2dataset's output
folder: ``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``), ``DIR/retry/retry_<n>.parquet`` (failed rows sent
to a retry round), ``DIR/img2dataset.log`` and ``DIR/availability.json``.

``stats`` also counts a folder that img2dataset wrote directly (the REACT README's own command: shards in ``DIR``,
no ``shards/``); there ``availability.json`` lies beside the shards.

The shards live in a folder of their own because img2dataset's incremental mode reads every ``*.json`` of its
output folder as ``<shard>_stats.json``: any other JSON file there breaks its resume.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.core.pairs_availability import FILE as AVAILABILITY_FILE

SHARD_DIGITS = 5  # img2dataset's oom_shard_count default: shards 00000.tar ...
_SHARD_FILE = re.compile(r"^(\d+)(\.tar|\.parquet|_stats\.json)$")


@dataclass(frozen=True)
class PairsLayout:
    root: Path
    flat: bool = False  # shards directly in root (the REACT README's own img2dataset command), not in root/shards

    @property
    def shards(self) -> Path:
        return self.root if self.flat else self.root / "shards"

    @property
    def availability(self) -> Path:
        return self.root / AVAILABILITY_FILE

    @property
    def state(self) -> Path:
        return self.root / "download_state.json"

    @property
    def fetched(self) -> Path:
        return self.root / "fetched.json"

    @property
    def retry(self) -> Path:
        return self.root / "retry"

    @property
    def log(self) -> Path:
        return self.root / "img2dataset.log"

    def shard_name(self, shard: int) -> str:
        return f"{shard:0{SHARD_DIGITS}d}"

    def tar(self, shard: int) -> Path:
        return self.shards / f"{self.shard_name(shard)}.tar"

    def parquet(self, shard: int) -> Path:
        return self.shards / f"{self.shard_name(shard)}.parquet"

    def stats(self, shard: int) -> Path:
        return self.shards / f"{self.shard_name(shard)}_stats.json"

    def shard_files(self) -> dict[int, set[str]]:
        """Shard id -> which of its files exist ('.tar', '.parquet', '_stats.json')."""
        found: dict[int, set[str]] = {}
        if self.shards.is_dir():
            for p in self.shards.iterdir():
                m = _SHARD_FILE.match(p.name)
                if m:
                    found.setdefault(int(m.group(1)), set()).add(m.group(2))
        return found

    def finished_shards(self) -> list[int]:
        """Shards img2dataset finished (it writes ``_stats.json`` last)."""
        return sorted(s for s, kinds in self.shard_files().items() if "_stats.json" in kinds)

    def partial_shards(self) -> list[int]:
        """Shards with files but no ``_stats.json``: a download interrupted while writing them."""
        return sorted(s for s, kinds in self.shard_files().items() if "_stats.json" not in kinds)


def open_layout(root: str | Path) -> PairsLayout:
    """The layout of an existing pairs folder: ours (``DIR/shards/``), or img2dataset's output folder itself (the
    REACT README's command: ``NNNNN.tar`` and ``NNNNN_stats.json`` directly in DIR)."""
    ours = PairsLayout(Path(root))
    if ours.shards.is_dir():
        return ours
    flat = PairsLayout(Path(root), flat=True)
    return flat if flat.shard_files() else ours


def brace_pattern(folder: Path, shards: list[int]) -> str:
    """The ``--train-data`` pattern naming exactly ``shards`` (runs of consecutive ids as ``{a..b}``)."""
    if not shards:
        return ""
    runs: list[tuple[int, int]] = []
    for s in sorted(set(shards)):
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    name = f"{{0:0{SHARD_DIGITS}d}}".format
    parts = [name(a) if a == b else f"{{{name(a)}..{name(b)}}}" for a, b in runs]
    body = parts[0] if len(parts) == 1 else "{" + ",".join(parts) + "}"
    return f"{folder}/{body}.tar"
