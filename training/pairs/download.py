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
import signal
import subprocess
import threading
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


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signal(signum: int, frame) -> None:
    raise _Signalled(signum)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM img2dataset's process group (it and its workers) and wait for it; after 10 s, or once it is gone,
    SIGKILL whatever of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _pid_file(layout: PairsLayout) -> Path:
    return layout.root / ".img2dataset.pid"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_orphan(layout: PairsLayout) -> None:
    """Stop an img2dataset left running in this folder by a download that was killed itself (SIGKILL cannot be
    caught: its img2dataset, in a session of its own, outlives it). Called with the folder's lock held, so no live
    download owns it. The recorded process is checked to be img2dataset writing to this folder before it is
    signalled (a pid may have been reused)."""
    path = _pid_file(layout)
    try:
        pgid = int(path.read_text().split()[0])
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        path.unlink(missing_ok=True)
        return
    if "img2dataset" in cmdline and str(layout.shards) in cmdline and _group_alive(pgid):
        logger.warning("stopping img2dataset (process group %d) left running by a killed download in %s", pgid,
                       layout.root)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
    path.unlink(missing_ok=True)


def run_img2dataset(cmd: list[str], layout: PairsLayout, rnd: Round, progress: Progress | None) -> None:
    """Run one round of img2dataset, its output appended to DIR/img2dataset.log; report finished shards.

    img2dataset runs in a session (process group) of its own; SIGTERM or SIGINT of this process stops that whole
    group and waits for it before the folder's lock is released (the caller holds it), then exits 128 + signal.
    Its pid is kept in ``DIR/.img2dataset.pid`` while it runs, so that the next download stops one left running by
    a download killed with SIGKILL (:func:`stop_orphan`)."""
    stop_orphan(layout)
    shutil.rmtree(layout.shards / "_tmp", ignore_errors=True)  # a killed run's leftovers (only we write here)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logger.info("running %s", " ".join(cmd))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    with open(layout.log, "a", encoding="utf-8") as log:
        log.write(f"\n# {_now()} {' '.join(cmd)}\n")
        log.flush()
        for sig in previous:
            signal.signal(sig, _raise_signal)
        proc = None
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=layout.root,
                                    start_new_session=True)
            _pid_file(layout).write_text(f"{proc.pid}\n")
            while proc.poll() is None:
                if progress is not None:
                    progress(_finished_in(layout, rnd), rnd.shards)
                time.sleep(0.5)
        except BaseException as exc:
            if proc is not None:
                _stop_group(proc)
            if isinstance(exc, _Signalled):
                logger.error("stopped by signal %d: img2dataset stopped; run download again to resume", exc.signum)
                raise SystemExit(128 + exc.signum) from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    _pid_file(layout).unlink(missing_ok=True)
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


def parquet_identity(parquet: Path) -> dict:
    """Size, mtime (ns) and sha256 of the source parquet (the hash memoised by file identity, so a 1 GB parquet is
    read once)."""
    from harness.core.hashing import file_sha256

    st = parquet.stat()
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns, "source_sha256": file_sha256(parquet)}


def _same_parquet(state: DownloadState, source: str, rows: int, now: dict) -> bool:
    if Path(state.source_parquet).resolve() != Path(source) or state.source_rows != rows:
        return False
    if state.source_sha256 is None:  # a state written before content was recorded: path and rows only
        return True
    return state.source_size == now["source_size"] and state.source_sha256 == now["source_sha256"]


def open_state(layout: PairsLayout, parquet: Path, rows: int, flags: DownloadFlags, program: Program,
               nps_given: bool) -> DownloadState:
    """The folder's download state: new, or the existing one after checking it is about the same parquet (path,
    rows, size and content hash)."""
    state = read_state(layout)
    source = str(parquet.resolve())
    now = parquet_identity(parquet)
    if state is None:
        if layout.finished_shards():
            raise HarnessError(f"{layout.shards} already holds shards but {layout.state} is missing: they were not "
                               f"written by training.pairs. Use another --out, or move them away.")
        nps = flags.number_sample_per_shard
        state = DownloadState(source, rows, nps, program.version,
                              [Round("initial", source, rows, 0, -(-rows // nps), _now())], **now)
        write_state(layout, state)
        return state
    if not _same_parquet(state, source, rows, now):
        was = (f"{state.source_parquet} ({state.source_rows:,} rows, {state.source_size} bytes, sha256 "
               f"{str(state.source_sha256)[:12]})")
        raise HarnessError(f"{layout.root} is a download of {was}, not of {source} as it is now ({rows:,} rows, "
                           f"{now['source_size']} bytes, sha256 {now['source_sha256'][:12]}): the parquet changed or "
                           f"is another one, and its shards would be mixed with the old ones. Use a new --out, or "
                           f"--restart to delete this folder's shards and download the parquet afresh.")
    if nps_given and flags.number_sample_per_shard != state.number_sample_per_shard:
        raise HarnessError(f"--number-sample-per-shard {flags.number_sample_per_shard}: {layout.root} was started "
                           f"with {state.number_sample_per_shard} per shard (in {layout.state}); a resume must keep "
                           f"it. Drop the flag, use another --out, or --restart.")
    return state


def restart(layout: PairsLayout) -> None:
    """Forget a folder's download: its state, shards, retry parquets and availability.json (the parquet stays)."""
    for folder in (layout.shards, layout.retry):
        shutil.rmtree(folder, ignore_errors=True)
    for path in (layout.state, layout.availability):
        path.unlink(missing_ok=True)
    logger.info("--restart: removed the download in %s", layout.root)


def download(parquet: Path, root: Path, flags: DownloadFlags, program: Program, *, retry_failed: bool = False,
             nps_given: bool = False, progress: Progress | None = None, fresh: bool = False) -> Outcome:
    """One round (see the module docstring); returns what it ran."""
    layout = PairsLayout(Path(root).resolve())  # img2dataset runs in DIR: every path it gets is absolute
    parquet = Path(parquet).resolve()
    check_writable_dir(layout.root, "pairs folder", "--out")
    layout.shards.mkdir(exist_ok=True)
    rows = parquet_rows(parquet, (flags.url_col, flags.caption_col))
    try:
        with file_lock(layout.root / ".download.lock", wait=False):
            if fresh:
                restart(layout)
                layout.shards.mkdir(exist_ok=True)
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
