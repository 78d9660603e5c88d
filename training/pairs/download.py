"""``python -m training.pairs download``: the pairs parquet -> webdataset shards, by the real img2dataset.

- **First round** (:func:`download`): img2dataset in its ``incremental`` mode on the source parquet, output
  ``DIR/shards/``. A rerun after a kill (even SIGKILL of every process) skips the shards that have ``_stats.json``
  and writes the others anew, so no shard is counted twice.
- **Retry rounds** (``retry_failed=True``): the rows whose last try failed (read from the finished shards'
  parquets) go to ``DIR/retry/retry_<n>.parquet`` with their source row number (``pairs_row``, kept by
  img2dataset's ``--save_additional_columns``) and are downloaded in img2dataset's ``extend`` mode into new shards
  numbered after the last finished one. Partial shards of an interrupted retry round are removed first (their
  rows are still failed, so the new round tries them again).

One download at a time per folder (a lock). img2dataset's own output goes to ``DIR/img2dataset.log``.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness.core.atomic import LockTimeout, atomic_write, check_writable_dir, file_lock
from harness.core.errors import HarnessError
from training.pairs.availability import read_shard_rows, row_identity
from training.pairs.img2dataset_program import DownloadFlags, Program, command
from training.pairs.layout import PairsLayout
from training.pairs.state import DownloadState, Round, read_state, write_state

logger = logging.getLogger(__name__)

# REACT README step 3: without a fast DNS resolver a large download loses many URLs to DNS timeouts
DNS_ADVICE_ROWS = 100_000
DNS_ADVICE = ("REACT's README, step 3: set up a high-performance DNS resolver before a large download (img2dataset's "
              "guide: https://github.com/rom1504/img2dataset#setting-up-a-high-performance-dns-resolver, e.g. a local "
              "knot-resolver or bind9); with the default resolver many URLs fail by DNS timeouts and the set you get "
              "is smaller than what is online.")
RETRY_COLUMN = "pairs_row"
Progress = Callable[[int, int], None]  # (shards finished in this round, shards in this round)


@dataclass
class Outcome:
    round: Round | None  # None: nothing was run
    message: str


def dns_advice(rows: int) -> str | None:
    return DNS_ADVICE if rows > DNS_ADVICE_ROWS else None


def parquet_rows(path: Path, columns: tuple[str, ...]) -> int:
    """Rows of the source parquet, after checking it has the URL and caption columns."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise HarnessError(f"--parquet {path} does not exist. Fetch REACT's pairs with `python -m training.pairs "
                           f"fetch --out DIR`, or give the parquet `python -m retrieval query` wrote.")
    try:
        meta = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"--parquet {path} is not a readable parquet file ({exc}). Fetch it again.") from exc
    names = meta.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise HarnessError(f"--parquet {path} has no column {', '.join(missing)} (it has {', '.join(names)}); "
                           f"img2dataset reads the URL and caption columns REACT's parquet has: "
                           f"{', '.join(columns)}.")
    return meta.metadata.num_rows


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_img2dataset(cmd: list[str], layout: PairsLayout, rnd: Round, progress: Progress | None) -> None:
    """Run one round of img2dataset, its output appended to DIR/img2dataset.log; report finished shards."""
    shutil.rmtree(layout.shards / "_tmp", ignore_errors=True)  # a killed run's leftovers (only we write here)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logger.info("running %s", " ".join(cmd))
    with open(layout.log, "a", encoding="utf-8") as log:
        log.write(f"\n# {_now()} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=layout.root)
        try:
            while proc.poll() is None:
                if progress is not None:
                    progress(_finished_in(layout, rnd), rnd.shards)
                time.sleep(0.5)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if progress is not None:
        progress(_finished_in(layout, rnd), rnd.shards)
    if proc.returncode != 0:
        raise HarnessError(f"img2dataset exited with status {proc.returncode}; its output is in {layout.log}:\n"
                           f"{_tail(layout.log)}")


def _finished_in(layout: PairsLayout, rnd: Round) -> int:
    return sum(1 for s in rnd.shard_ids if layout.stats(s).exists())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _check_round_finished(layout: PairsLayout, rnd: Round, rerun: str) -> None:
    missing = [s for s in rnd.shard_ids if not layout.stats(s).exists()]
    if missing:
        raise HarnessError(f"img2dataset ended but {len(missing)} of the {rnd.shards} shards of this round have no "
                           f"_stats.json (e.g. {layout.stats(missing[0])}); see {layout.log}. Run `{rerun}` again: "
                           f"it resumes with the unfinished shards.")


def open_state(layout: PairsLayout, parquet: Path, rows: int, flags: DownloadFlags, program: Program,
               nps_given: bool) -> DownloadState:
    """The folder's download state: new, or the existing one after checking it is about the same parquet."""
    state = read_state(layout)
    source = str(parquet.resolve())
    if state is None:
        if layout.finished_shards():
            raise HarnessError(f"{layout.shards} already holds shards but {layout.state} is missing: they were not "
                               f"written by training.pairs. Use another --out, or move them away.")
        nps = flags.number_sample_per_shard
        state = DownloadState(source, rows, nps, program.version,
                              [Round("initial", source, rows, 0, -(-rows // nps), _now())])
        write_state(layout, state)
        return state
    if Path(state.source_parquet).resolve() != Path(source) or state.source_rows != rows:
        raise HarnessError(f"{layout.root} is a download of {state.source_parquet} ({state.source_rows:,} rows), not "
                           f"of {source} ({rows:,} rows). Use another --out for another parquet.")
    if nps_given and flags.number_sample_per_shard != state.number_sample_per_shard:
        raise HarnessError(f"--number-sample-per-shard {flags.number_sample_per_shard}: {layout.root} was started "
                           f"with {state.number_sample_per_shard} per shard (in {layout.state}); a resume must keep "
                           f"it. Drop the flag or use another --out.")
    return state


def download(parquet: Path, root: Path, flags: DownloadFlags, program: Program, *, retry_failed: bool = False,
             nps_given: bool = False, progress: Progress | None = None) -> Outcome:
    """One round (see the module docstring); returns what it ran."""
    layout = PairsLayout(Path(root).resolve())  # img2dataset runs in DIR: every path it gets is absolute
    parquet = Path(parquet).resolve()
    check_writable_dir(layout.root, "pairs folder", "--out")
    layout.shards.mkdir(exist_ok=True)
    rows = parquet_rows(parquet, (flags.url_col, flags.caption_col))
    try:
        with file_lock(layout.root / ".download.lock", wait=False):
            state = open_state(layout, parquet, rows, flags, program, nps_given)
            flags = replace(flags, number_sample_per_shard=state.number_sample_per_shard)
            if retry_failed:
                return _retry_round(layout, state, flags, program, progress)
            return _initial_round(layout, state, flags, program, progress)
    except LockTimeout as exc:
        raise HarnessError(f"another `training.pairs download` is running on {layout.root} (lock "
                           f"{layout.root / '.download.lock'}); wait for it or stop it.") from exc


def _initial_round(layout: PairsLayout, state: DownloadState, flags: DownloadFlags, program: Program,
                   progress: Progress | None) -> Outcome:
    rnd = state.rounds[0]
    if state.initial_complete(layout.finished_shards()):
        return Outcome(None, f"all {rnd.shards} shards of {Path(rnd.parquet).name} are finished in {layout.shards}")
    done = _finished_in(layout, rnd)
    if done:
        logger.info("resuming: %d of %d shards finished, img2dataset's incremental mode does the rest", done,
                    rnd.shards)
    run_img2dataset(command(program, Path(rnd.parquet), layout.shards, flags, "incremental"), layout, rnd, progress)
    _check_round_finished(layout, rnd, "python -m training.pairs download")
    return Outcome(rnd, f"{rnd.shards} shards of {Path(rnd.parquet).name} finished in {layout.shards}")


def failed_rows(layout: PairsLayout, state: DownloadState) -> list[dict]:
    """The rows whose last try failed, with their source row number, in source order."""
    final: dict[tuple, dict] = {}
    for shard in layout.finished_shards():
        for row in read_shard_rows(layout, shard):
            final[row_identity(shard, row, state)] = row
    out = [{"row": ident[1], "url": r["url"], "caption": r.get("caption")}
           for ident, r in final.items() if r["status"] != "success" and ident[0] == "row"]
    return sorted(out, key=lambda r: r["row"])


def write_retry_parquet(path: Path, rows: list[dict], flags: DownloadFlags) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({flags.url_col: [r["url"] for r in rows], flags.caption_col: [r["caption"] for r in rows],
                      RETRY_COLUMN: pa.array([r["row"] for r in rows], pa.int64())})
    atomic_write(path, lambda f: pq.write_table(table, f))


def _retry_round(layout: PairsLayout, state: DownloadState, flags: DownloadFlags, program: Program,
                 progress: Progress | None) -> Outcome:
    finished = layout.finished_shards()
    if not state.initial_complete(finished):
        raise HarnessError(f"--retry-failed: the first download in {layout.root} is not finished "
                           f"({sum(1 for s in state.rounds[0].shard_ids if s in set(finished))} of "
                           f"{state.initial_shards} shards). Run `python -m training.pairs download` without "
                           f"--retry-failed first: it resumes.")
    for shard in layout.partial_shards():  # an interrupted retry round's unfinished shards
        for path in (layout.tar(shard), layout.parquet(shard)):
            path.unlink(missing_ok=True)
        logger.info("removed unfinished shard %s of an interrupted retry round", layout.shard_name(shard))
    rows = failed_rows(layout, state)
    if not rows:
        return Outcome(None, "no failed rows: nothing to retry")
    n = len(state.rounds)
    path = layout.retry / f"retry_{n}.parquet"
    layout.retry.mkdir(exist_ok=True)
    write_retry_parquet(path, rows, flags)
    first = max(layout.finished_shards()) + 1
    rnd = Round("retry", str(path), len(rows), first, state.shards_for(len(rows)), _now())
    state.rounds.append(rnd)
    write_state(layout, state)
    run_img2dataset(command(program, path, layout.shards, flags, "extend", [RETRY_COLUMN]), layout, rnd, progress)
    _check_round_finished(layout, rnd, "python -m training.pairs download --retry-failed")
    return Outcome(rnd, f"{len(rows)} failed rows tried again in shards {layout.shard_name(first)}.."
                        f"{layout.shard_name(first + rnd.shards - 1)}")
