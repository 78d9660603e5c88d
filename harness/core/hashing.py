"""Content hashes of files, computed once per file identity and remembered in the cache folder.

Weights files and dataset zips are large; their sha256 is what decides whether a result is the right one (see
harness.store.runkey), but hashing them on every run would cost minutes. The memo key is the file's identity: its
resolved path, device, inode, size, mtime and ctime (all in ns). A file replaced by another (a new inode), or rewritten
in place and its mtime put back (``touch -r``, ``os.utime``), has a new ctime — which no user-space call can set back —
so it is hashed again; an unchanged file never is. The memo is only a shortcut: ``fresh=True`` (``--verify-data``,
``--refresh-cache``, ``--no-cache``) hashes the content now and corrects the memo; a memo that cannot be read or
written only costs a re-hash.
"""
from __future__ import annotations

import hashlib
import os
import stat
import string
from pathlib import Path

from harness.core import paths

CHUNK = 1 << 22
_HEX = frozenset(string.hexdigits.lower())


def _identity(path: Path, st: os.stat_result) -> str:
    return (f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|"
            f"{getattr(st, 'st_ctime_ns', int(st.st_ctime * 1e9))}")


def _memo_file(path: Path, st: os.stat_result, memo_dir: Path | None) -> Path:
    key = hashlib.sha256(_identity(path, st).encode()).hexdigest()[:24]
    return (memo_dir or paths.cache_dir() / "sha256") / key


def memo_path(path: str | os.PathLike, memo_dir: Path | None = None) -> Path:
    """Where the sha256 of ``path`` as it is now is remembered (the file need not exist yet)."""
    path = Path(path)
    return _memo_file(path, os.stat(path), memo_dir)


def _remembered(memo: Path) -> str | None:
    from harness.core.errors import HarnessError
    from harness.core.safe_read import read_bounded_text

    try:
        value = read_bounded_text(memo, "hash memo").strip()
    except (OSError, ValueError, HarnessError):  # missing, unreadable, not a regular file, too large, not text
        return None
    return value if len(value) == 64 and set(value) <= _HEX else None


def _remember(memo: Path, digest: str) -> None:
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.memo.tmp")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    except OSError:
        pass


def file_sha256(path: str | os.PathLike, memo_dir: Path | None = None, fresh: bool = False) -> str:
    """sha256 of a file, memoised under ``<cache>/sha256/`` by the file's identity (see the module's docstring).
    ``fresh``: hash the content now whatever is remembered, and remember the result."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))  # a FIFO cannot block
    with os.fdopen(fd, "rb") as f:
        before = os.fstat(fd)  # the identity of what is read, not of what a name pointed to earlier
        if not stat.S_ISREG(before.st_mode):
            from harness.core.errors import HarnessError

            raise HarnessError(f"{path}: is not a regular file (a device, FIFO or folder); weights and data files "
                               f"are hashed only as regular files. Name the file itself.")
        memo = _memo_file(path, before, memo_dir)
        if not fresh:
            value = _remembered(memo)
            if value is not None:
                return value
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
        after = os.fstat(fd)
    digest = h.hexdigest()
    if _identity(path, after) == _identity(path, before):  # a file written to while being hashed is not remembered
        _remember(memo, digest)
    return digest
