"""Atomic file writes, their leftovers, and per-result locks.

A write goes to a temporary file in the same folder, is fsynced, then renamed over the target: a run killed
mid-write leaves either the old file or no file, never a partial one. Temporary names carry the writer's pid
(``.<name>.<pid>.<random>.tmp``), so a later run removes only leftovers whose writer is dead
(:func:`remove_stale_temp_files`) and never the temp file of a live concurrent run.
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

logger = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


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
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def check_writable_dir(folder: Path, what: str, flag: str) -> Path:
    """``folder`` exists (or can be made) as a writable directory; otherwise a HarnessError naming it."""
    from harness.core.errors import HarnessError

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
