"""Content hashes of files, computed once per (path, size, mtime) and remembered in the cache folder.

Weights files and dataset zips are large; their sha256 is what decides whether a result is the right one (see
harness.store.runkey), but hashing them on every run would cost minutes. The memo key is the file's resolved path, size
and mtime, so a changed file is hashed again and an unchanged one never is.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.core import paths

CHUNK = 1 << 22


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file, memoised under ``<cache>/sha256/`` (a read-only or broken cache only costs a re-hash)."""
    path = Path(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = (memo_dir or paths.cache_dir() / "sha256") / key
    try:
        if memo.is_file():
            value = memo.read_text().strip()
            if len(value) == 64:
                return value
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.memo.tmp")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest
