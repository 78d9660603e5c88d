"""``DIR/download_state.json``: what ``download`` ran, so a resume, a retry and ``stats`` agree on the shards.

Round 0 downloads the source parquet into shards ``0 .. ceil(rows / number_sample_per_shard) - 1`` (img2dataset's
incremental mode: a rerun skips shards that have ``_stats.json``). Each ``--retry-failed`` round downloads a parquet
of the still-failed rows into the shards after the last finished one (img2dataset's ``extend`` mode).
``DIR/fetched.json``: what ``fetch`` downloaded (repo, file, revision, commit, path).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.core.atomic import write_json
from harness.core.errors import HarnessError
from training.pairs.layout import PairsLayout

STATE_VERSION = 1


@dataclass
class Round:
    kind: str  # "initial" or "retry"
    parquet: str
    rows: int
    first_shard: int
    shards: int
    started_at: str

    @property
    def shard_ids(self) -> range:
        return range(self.first_shard, self.first_shard + self.shards)


@dataclass
class DownloadState:
    source_parquet: str
    source_rows: int
    number_sample_per_shard: int
    img2dataset_version: str | None
    rounds: list[Round] = field(default_factory=list)
    version: int = STATE_VERSION
    source_size: int | None = None  # the source parquet as it was when the download started
    source_mtime_ns: int | None = None
    source_sha256: str | None = None

    @property
    def initial_shards(self) -> int:
        return self.rounds[0].shards if self.rounds else 0

    def initial_complete(self, finished: list[int]) -> bool:
        done = set(finished)
        return bool(self.rounds) and all(s in done for s in self.rounds[0].shard_ids)

    def shards_for(self, rows: int) -> int:
        return math.ceil(rows / self.number_sample_per_shard)


def read_state(layout: PairsLayout) -> DownloadState | None:
    if not layout.state.exists():
        return None
    try:
        data = json.loads(layout.state.read_text(encoding="utf-8"))
        rounds = [Round(**r) for r in data.pop("rounds")]
        return DownloadState(**data, rounds=rounds)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise HarnessError(f"{layout.state} is not a download state of training.pairs ({exc}). It records which "
                           f"shards belong to which round; if you know the folder holds one plain download, delete "
                           f"it and run download again (finished shards are kept).") from exc


def write_state(layout: PairsLayout, state: DownloadState) -> None:
    data = asdict(state)
    write_json(layout.state, data)


def read_fetched(layout: PairsLayout) -> dict | None:
    try:
        return json.loads(layout.fetched.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
