"""Atomic file writes, their leftovers, and per-result locks.

A write goes to a temporary file in the same folder, is fsynced, then renamed over the target: a run killed
mid-write leaves either the old file or no file, never a partial one. Temporary names carry the writer's pid
(``.<name>.<pid>.<random>.tmp``), so a later run removes only leftovers whose writer is dead
(:func:`remove_stale_temp_files`) and never the temp file of a live concurrent run.

A write that does not fit (ENOSPC, EDQUOT, or EFBIG from a file-size limit) raises :class:`OutOfSpaceError`, one line
naming the folder and the bytes needed, and leaves nothing behind: when the size is known the space is reserved
first (``posix_fallocate``), so a full disk fails before any byte is written.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.core.errors import HarnessError
from harness.core.units import human_bytes

logger = logging.getLogger(__name__)

# a write that does not fit: the disk (ENOSPC), the user's quota (EDQUOT), a file-size limit (EFBIG, `ulimit -f`)
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer can still use in ``folder`` (None when unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def space_message(path: str | os.PathLike, needed: int | None, cause: OSError) -> str:
    """One line: which folder is full, what needed how many bytes, how much is free there, and the cause."""
    path = Path(path)
    free = free_bytes(path.parent)
    need = f"needs {needed:,} bytes ({human_bytes(needed)})" if needed else "did not fit"
    room = f"{free:,} bytes free there" if free is not None else "free space unknown"
    return f"{path.parent} is out of space: writing {path.name} {need}, {room} ({cause.strerror or cause})"


class OutOfSpaceError(HarnessError, OSError):
    """A write that did not fit, as one line naming the folder and the bytes needed. Both a HarnessError (a run
    summary shows its message) and an OSError with the cause's errno (code that tolerates an unwritable cache keeps
    catching it)."""

    def __init__(self, path: str | os.PathLike, needed: int | None, cause: OSError):
        self.line = space_message(path, needed, cause)  # what happened, without the advice
        self.message = f"{self.line}. Free some space there, or write elsewhere (--results for results, " \
                       f"HARNESS_CACHE for caches)."
        OSError.__init__(self, cause.errno, self.message)
        self.folder, self.needed = Path(path).parent, needed

    def __str__(self) -> str:
        return self.message


def reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for a file being written, so a full disk fails here (ENOSPC) rather than half way, or
    as SIGBUS on a memory map. A filesystem that cannot reserve is left to report a full disk on write."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in OUT_OF_SPACE:
            raise
        logger.debug("cannot reserve space (%s); relying on write errors", exc)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb",
                 size: int | None = None) -> Path:
    """``write(f)`` into a temp file beside ``path``, fsynced, then renamed over it. ``size``: about how many bytes
    will be written (reserved first; the file is cut to what was written). A write that does not fit raises
    :class:`OutOfSpaceError`; the temp file is removed whatever fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, mode) as f:
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
                if size:
                    reserve(f.fileno(), size)
                write(f)
                f.flush()
                if size:
                    f.truncate()  # the reservation may be larger than what was written
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if is_out_of_space(exc) and not isinstance(exc, OutOfSpaceError):
                raise OutOfSpaceError(path, size, exc) from exc
            raise
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w", size=len(text.encode("utf-8")))


def write_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    array = np.asanyarray(array)
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), size=array.nbytes + 128)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), size=len(data))


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_files(folder: Path, recursive: bool = False) -> int:
    """Remove temp files left by writers that died; returns how many. Temp files of live processes stay."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        m = _TEMP_RE.match(tmp.name)
        if m is None:  # an older layout without the pid: remove only when clearly abandoned (a day old)
            try:
                stale = time.time() - tmp.stat().st_mtime > 86400
            except OSError:
                continue
        else:
            stale = not _pid_alive(int(m.group(1)))
        if stale:
            try:
                tmp.unlink()
                removed += 1
                logger.debug("removed leftover temp file %s", tmp)
            except OSError:
                pass
    return removed


class LockTimeout(Exception):
    pass


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held on ``path`` (created if needed) for the duration of the block.

    With ``wait`` a second process blocks until the first releases it (``on_wait`` is called once, first, so the
    caller can say why it waits); without it, :class:`LockTimeout` is raised at once. The lock dies with its
    process, so a killed run never leaves a stale lock behind. The file records the holder (host, pid) for humans.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not wait:
                raise LockTimeout(str(path)) from exc
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder, for humans: best effort (a full disk must not stop a run from taking its lock)
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the flock


def check_writable_dir(folder: Path, what: str, flag: str) -> Path:
    """``folder`` exists (or can be made) as a writable directory; otherwise a HarnessError naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HarnessError(f"The {what} {folder} is a file, not a folder. Pass another folder with {flag}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-probe.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HarnessError(f"The {what} {folder} is not writable ({exc.strerror or exc}). Fix its permissions or "
                           f"pass another folder with {flag}.") from exc
    return folder
