"""``python -m training.pairs stats DIR``: what the download holds, counted from img2dataset's own files.

Finished shards (those with ``_stats.json``, which img2dataset writes last) are counted from their ``.parquet`` —
one row per URL tried, with ``status`` and ``error_message`` — and checked against their ``_stats.json``
(``count``, ``successes``). A URL downloaded again by ``--retry-failed`` (its row carries ``pairs_row``) counts
once, with the outcome of its last try. Shards without ``_stats.json`` (a download interrupted while writing them)
are counted apart from their tar, marked partial, and kept out of ``train_data_pattern`` and ``successes``.
"""
from __future__ import annotations

import json
import logging
import math
import tarfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from harness.core import pairs_availability as schema
from harness.core.atomic import write_json
from harness.core.errors import HarnessError
from training.pairs import facts
from training.pairs.causes import cause_class
from training.pairs.layout import PairsLayout, brace_pattern, open_layout
from training.pairs.state import DownloadState, read_state, read_fetched

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def read_shard_rows(layout: PairsLayout, shard: int) -> list[dict]:
    """The rows of a finished shard's parquet: key, status, error_message, url, caption [, pairs_row]."""
    import pyarrow.parquet as pq

    path = layout.parquet(shard)
    try:
        names = pq.read_schema(path).names
        cols = [c for c in ("key", "status", "error_message", "url", "caption", "pairs_row") if c in names]
        return pq.read_table(path, columns=cols).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a broken file
        raise HarnessError(f"{path} (shard {shard}, finished: it has {layout.stats(shard).name}) is not a readable "
                           f"parquet ({exc}). Delete {layout.shard_name(shard)}.* in {layout.shards} and run "
                           f"`python -m training.pairs download` again to fetch that shard anew.") from exc


def read_shard_stats(layout: PairsLayout, shard: int) -> dict:
    path = layout.stats(shard)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        int(data["count"]), int(data["successes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"{path} is not an img2dataset stats file with 'count' and 'successes' ({exc}). Delete "
                           f"{layout.shard_name(shard)}.* in {layout.shards} and run download again.") from exc
    return data


def count_tar_samples(path: Path) -> tuple[int, bool]:
    """(samples with an image in a tar, whether the tar read to its end); a tar cut off by a kill reads up to the
    cut."""
    keys: set[str] = set()
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                name = member.name
                if name.lower().endswith(IMAGE_EXTS):
                    keys.add(name.rsplit(".", 1)[0])
        return len(keys), True
    except (tarfile.TarError, OSError, EOFError):
        return len(keys), False


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return None


def row_identity(shard: int, row: dict, state: DownloadState | None) -> tuple:
    """Which URL of the source a shard row is: its ``pairs_row`` (retry rounds) or, in the first round,
    shard x number_sample_per_shard + its index in the shard (img2dataset's key is shard * 10^k + index)."""
    if row.get("pairs_row") is not None:
        return ("row", int(row["pairs_row"]))
    if state is not None and shard < state.initial_shards:
        index = int(row["key"]) % (10 ** math.ceil(math.log10(state.number_sample_per_shard)))  # img2dataset's
        return ("row", shard * state.number_sample_per_shard + index)
    return ("key", shard, row["key"])  # shards this tool did not make: each row its own URL


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


def compute(root: Path) -> dict:
    """The availability of the download in ``root`` (see :mod:`harness.core.pairs_availability`)."""
    layout = open_layout(root)
    if not layout.shards.is_dir():
        raise HarnessError(f"{layout.shards} does not exist: no download in {layout.root}. Run `python -m "
                           f"training.pairs download --parquet F --out {layout.root}` first.")
    state = read_state(layout)
    finished = layout.finished_shards()
    final: dict[tuple, tuple[str, str | None]] = {}
    stats_successes = attempts = size = 0
    starts, ends = [], []
    for shard in finished:
        stats = read_shard_stats(layout, shard)
        rows = read_shard_rows(layout, shard)
        if len(rows) != int(stats["count"]):
            raise HarnessError(f"{layout.parquet(shard)} has {len(rows)} rows but {layout.stats(shard).name} says "
                               f"count {stats['count']}: the shard is inconsistent. Delete "
                               f"{layout.shard_name(shard)}.* in {layout.shards} and run download again.")
        for row in rows:
            final[row_identity(shard, row, state)] = (row["status"], row.get("error_message"))
        stats_successes += int(stats["successes"])
        attempts += len(rows)
        size += layout.tar(shard).stat().st_size if layout.tar(shard).exists() else 0
        starts.append(stats.get("start_time"))
        ends.append(stats.get("end_time"))
    successes = sum(1 for status, _ in final.values() if status == "success")
    if successes != stats_successes:
        logger.warning("%d successes by URL but %d samples in the shards' stats: %d URL(s) succeeded in two shards",
                       successes, stats_successes, stats_successes - successes)
    failures = Counter(cause_class(status, err) for status, err in final.values() if status != "success")
    messages = Counter(err or status for status, err in final.values() if status != "success")
    partial = []
    for shard in layout.partial_shards():
        tar = layout.tar(shard)
        samples, whole = count_tar_samples(tar) if tar.exists() else (0, False)
        partial.append({"shard": layout.shard_name(shard), "tar_samples": samples, "tar_complete": whole,
                        "parquet_rows": _parquet_rows(layout.parquet(shard)) if layout.parquet(shard).exists()
                        else None})
    total = len(final)
    source = source_record(layout, state)
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "source_parquet": source,
        "downloaded_at": _iso(max((e for e in ends if e), default=None)),
        "download_started_at": _iso(min((s for s in starts if s), default=None)),
        "stats_computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total": total,
        "successes": stats_successes,
        "success_rate": stats_successes / total if total else None,
        "failed": total - successes,
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failure_messages": dict(messages.most_common(20)),
        "attempts": attempts,
        "retry_rounds": len(state.rounds) - 1 if state else 0,
        "complete": state.initial_complete(finished) if state else None,
        "shards": len(finished),
        "bytes": size,
        "train_data_pattern": brace_pattern(layout.shards.relative_to(layout.root), finished),
        "partial_shards": partial,
        "partial_samples": sum(p["tar_samples"] for p in partial),
        "published": facts.published_sets(),
        "img2dataset": state.img2dataset_version if state else None,
    }


def source_record(layout: PairsLayout, state: DownloadState | None) -> dict:
    """The source parquet: name, path, rows; hub repo/revision/commit when ``fetch`` got it."""
    if state is None:
        return {"name": None, "path": None, "rows": None}
    out = {"name": Path(state.source_parquet).name, "path": state.source_parquet, "rows": state.source_rows}
    fetched = read_fetched(layout)
    if fetched and Path(fetched.get("path", "")).resolve() == Path(state.source_parquet).resolve():
        out.update({k: fetched.get(k) for k in ("repo", "file", "revision", "commit")})
    return out


def write(root: Path) -> dict:
    """Compute and write ``root/availability.json`` atomically; returns its content."""
    data = compute(root)
    write_json(open_layout(root).availability, data)
    return data
