"""The schema of a retrieved-pairs download's ``availability.json`` and of its one-line summary.

``python -m training.pairs stats DIR`` writes ``DIR/availability.json``; ``training.main`` records its summary in
the run's training log (a ``train_data_set`` row of ``metrics.jsonl``, :mod:`harness.core.training_log`) and the
report reads both. One module names the keys so writer and readers cannot drift apart.

Fields of availability.json (counts are rows of the source parquet, i.e. URLs):

- ``total``: URLs tried (rows of every finished shard; a URL retried by ``--retry-failed`` counts once);
- ``successes``: samples in the finished shards (= ``--train-num-samples`` for ``train_data_pattern``);
- ``success_rate``: successes / total; ``failures``: still-failed URLs by cause class (:data:`CAUSES`);
- ``shards``, ``bytes``: finished shards and their tar bytes; ``train_data_pattern``: brace pattern of them,
  relative to the pairs folder (``shards/{00000..00007}.tar``; :func:`resolve_pattern` makes it a path);
- ``partial_shards``: shards written without img2dataset's ``_stats.json`` (a download interrupted there): what
  their tar holds, counted apart, never in the totals above;
- ``source_parquet`` (name, path, rows, and hub repo/revision when fetched), ``downloaded_at`` (end of the last
  finished shard, ISO 8601 UTC), ``published`` (REACT's set sizes, for comparison).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from harness.core.errors import HarnessError

FILE = "availability.json"
SCHEMA_VERSION = 1

# failure cause classes, in the order tables show them; HTTP status codes are "http_<code>"
CAUSES = ("http", "dns", "timeout", "tls", "connection", "decode", "resize", "other")

SUMMARY_KEYS = ("source_parquet", "downloaded_at", "successes", "total", "success_rate", "train_data_pattern",
                "availability_file")


@functools.lru_cache(maxsize=1)
def react_sets() -> dict:
    """REACT's facts about its retrieved pairs (package data ``react_sets.json``: hub repo, file, columns, the
    published set sizes), checked against ``reference/react.json`` and the REACT README by tests/test_pairs.py."""
    return json.loads((Path(__file__).parent / "react_sets.json").read_text(encoding="utf-8"))


def published_sets() -> dict[str, int]:
    """{"Dec 2021 set": 10000000, "Feb 2023 set": 8530639}: pairs per set REACT published."""
    return {name: int(s["pairs"]) for name, s in react_sets()["published_sets"].items()}


def read(path: str | Path) -> dict:
    """An availability.json (or the folder holding it), checked to be one."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise HarnessError(f"{path} does not exist: run `python -m training.pairs stats {path.parent}` (or "
                           f"`make pairs PAIRS_DIR={path.parent}`) first.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path} is not readable JSON ({exc}): rerun `python -m training.pairs stats "
                           f"{path.parent}`.") from exc
    missing = [k for k in ("successes", "total", "train_data_pattern", "source_parquet") if k not in data] \
        if isinstance(data, dict) else ["(an object)"]
    if missing:
        raise HarnessError(f"{path} lacks {', '.join(missing)}: it is not an availability.json of "
                           f"training.pairs; rerun `python -m training.pairs stats {path.parent}`.")
    return data


def resolve_pattern(pattern: str, folder: str | Path) -> str:
    """``train_data_pattern`` (stored relative to the pairs folder, e.g. ``shards/{00000..00007}.tar``) as a path
    under ``folder``; an absolute pattern or a URL is returned as it is."""
    if not pattern or "://" in pattern or pattern.startswith("pipe:") or Path(pattern).is_absolute():
        return pattern
    return str(Path(folder).resolve() / pattern)


def summary(data: dict, path: str | Path | None = None) -> dict:
    """What a training run records about the set it trained on (and the report shows); ``path``: the
    availability.json read, against whose folder the shard pattern is resolved."""
    src = data.get("source_parquet") or {}
    out = {"source_parquet": src.get("name") if isinstance(src, dict) else str(src),
           "downloaded_at": data.get("downloaded_at"), "successes": data.get("successes"),
           "total": data.get("total"), "success_rate": data.get("success_rate"),
           "train_data_pattern": resolve_pattern(data.get("train_data_pattern") or "", Path(path).parent)
           if path is not None else data.get("train_data_pattern"),
           "availability_file": str(path) if path is not None else None}
    return {k: out[k] for k in SUMMARY_KEYS}


def find_for_pattern(pattern: str) -> Path | None:
    """The availability.json describing the shards of a ``--train-data`` pattern: the pattern's folder (the
    shards folder) or its parent (the pairs folder); None when there is none (shards from elsewhere)."""
    first = pattern.split("::")[0]
    if "://" in first or first.startswith("pipe:"):
        return None
    # the folder part: up to the last '/' before the first brace (``/p/shards/{0..7}.tar`` -> ``/p/shards``)
    folder = Path(first[:first.index("{")].rpartition("/")[0] or ".") if "{" in first else Path(first).parent
    for candidate in (folder / FILE, folder.parent / FILE):
        if candidate.is_file():
            return candidate
    return None


def label(s: dict) -> str:
    """One line for a summary: ``imagenet_10m.parquet, downloaded 2026-12-05: 8,530,639 / 9,850,000 (86.6%)``."""
    date = (s.get("downloaded_at") or "?")[:10]
    rate = s.get("success_rate")
    pct = f" ({100 * rate:.1f}%)" if isinstance(rate, (int, float)) else ""
    succ, total = s.get("successes"), s.get("total")
    counts = f"{succ:,} / {total:,}" if isinstance(succ, int) and isinstance(total, int) else "? / ?"
    return f"{s.get('source_parquet') or '?'}, downloaded {date}: {counts}{pct}"
