"""Shard size for a small pairs set: enough shards that every data-loading worker of every training rank gets one.

Training (``training.data.check_shards``, as open_clip_train) needs at least ranks x workers shards; img2dataset's
default of 10,000 samples per shard gives a retrieved set of a few thousand pairs one shard. ``make customize``
asks :func:`samples_per_shard` for the ``--number-sample-per-shard`` of its download.
"""
from __future__ import annotations

from harness.core.errors import HarnessError

DEFAULT_SAMPLES_PER_SHARD = 10_000  # img2dataset's --number_sample_per_shard default


def samples_per_shard(rows: int, ranks: int, workers: int, most: int = DEFAULT_SAMPLES_PER_SHARD,
                      source: str = "the pairs parquet") -> int:
    """The largest shard size up to ``most`` that writes ``rows`` rows as at least ``ranks x workers`` shards
    (ceil(rows / n) >= ranks x workers). A set with fewer rows than that is refused."""
    if ranks < 1 or workers < 0 or most < 1:
        raise HarnessError(f"shard size: ranks ({ranks}) and the shard size cap ({most}) must be at least 1, workers "
                           f"({workers}) at least 0.")
    needed = ranks * max(workers, 1)
    if rows < needed:
        raise HarnessError(f"{source} has {rows:,} pairs: training on {ranks} rank(s) x {max(workers, 1)} "
                           f"data-loading worker(s) needs at least {needed} shards of one pair or more. Retrieve more "
                           f"pairs (QUERY_FLAGS='--per-class N' with a larger N), or train on fewer ranks/workers "
                           f"(NGPUS=..., CUSTOM_WORKERS=...).")
    return min(most, rows // needed)
