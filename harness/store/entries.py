"""Array cache entries (pixels, image features) and the `harness cache ls` / `cache prune` views of the cache folder.

An entry is a folder ``<HARNESS_CACHE>/<kind>/<name>-<key16>/`` holding ``<kind>.npy`` and ``meta.json``. The array
is written first (a temp file named with the writer's pid, fsynced, renamed); ``meta.json`` is written last and is the
commit point, so a killed writer leaves no entry that looks finished. A reader checks the key, shape and dtype
recorded against what it expects and treats anything else as a miss (recomputed, never trusted). The meta file's
mtime is the entry's "last used". Rows of images that could not be read are zero and listed in ``errors``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core import paths

logger = logging.getLogger(__name__)

META = "meta.json"
KINDS = ("pixels", "features", "classifiers", "sha256")


@dataclass
class CacheEntry:
    kind: str  # "pixels" or "features"
    folder: Path
    key: str
    shape: tuple[int, ...]
    dtype: str | None = None  # None: any float dtype (features are kept as computed)
    info: dict[str, Any] = field(default_factory=dict)  # recorded in meta.json (what the entry is of)

    @property
    def array_path(self) -> Path:
        return self.folder / f"{self.kind}.npy"

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f".{self.folder.name}.lock"

    def load(self, mmap: bool = True) -> tuple[np.ndarray, dict[int, str]] | None:
        """(array, {row: error}) of a committed entry that matches, else None (a mismatch is logged)."""
        try:
            meta = json.loads(self.meta_path.read_text())
            arr = np.load(self.array_path, mmap_mode="r" if mmap else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable %s cache %s (%s); computing again", self.kind, self.folder, exc)
            return None
        dtype_ok = arr.dtype == np.dtype(self.dtype) if self.dtype else arr.dtype.kind == "f"
        if meta.get("key") != self.key or arr.shape != self.shape or not dtype_ok:
            logger.warning("ignoring the %s cache %s: holds %s %s, expected %s %s; computing again", self.kind,
                           self.folder, arr.shape, arr.dtype, self.shape, self.dtype or "float")
            return None
        try:
            os.utime(self.meta_path)
        except OSError:
            pass
        return arr, {int(k): v for k, v in meta.get("errors", {}).items()}

    def start(self) -> Path:
        """A new zero-filled temp array to fill in place (memory-mapped; other processes may open it too)."""
        from numpy.lib.format import open_memmap

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.array_path.name}.{os.getpid()}.build.tmp"
        open_memmap(tmp, mode="w+", dtype=np.dtype(self.dtype), shape=self.shape).flush()
        return tmp

    def commit(self, tmp: Path, errors: dict[int, str]) -> None:
        """Make a filled temp array this entry: fsync, rename, then meta.json."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.array_path)
        self._write_meta(errors)

    def write(self, array: np.ndarray, errors: dict[int, str]) -> None:
        """Store a whole array (features) as this entry."""
        from harness.core.atomic import write_npy

        write_npy(self.array_path, array)
        self._write_meta(errors)

    def _write_meta(self, errors: dict[int, str]) -> None:
        from harness.core.atomic import write_json

        write_json(self.meta_path, {
            "key": self.key, "kind": self.kind, **self.info, "shape": list(self.shape),
            "dtype": str(np.load(self.array_path, mmap_mode="r").dtype),
            "bytes": self.array_path.stat().st_size, "errors": {str(k): v for k, v in sorted(errors.items())},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })


def entry_folder(kind: str, name: str, key: str, cache_root: Path | None = None) -> Path:
    return (cache_root or paths.cache_dir()) / kind / f"{paths.slug(name)}-{key[:16]}"


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


@dataclass
class Listed:
    kind: str
    name: str
    path: Path
    bytes: int
    last_used: float
    detail: str


def list_cache(cache_root: Path | None = None) -> list[Listed]:
    """Every entry of the cache folder: array entries one by one, classifiers and hash memos as one line each."""
    root = cache_root or paths.cache_dir()
    out: list[Listed] = []
    for kind in ("pixels", "features"):
        for meta_path in sorted((root / kind).glob(f"*/{META}")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            detail = f"{meta.get('n_images', '?')} images, {meta.get('dtype', '?')} {meta.get('shape', '')}"
            if meta.get("model"):
                detail = f"{meta['model']}; {detail}"
            out.append(Listed(kind, meta.get("dataset", meta_path.parent.name), meta_path.parent,
                              _folder_bytes(meta_path.parent), meta_path.stat().st_mtime, detail))
    for kind in ("classifiers", "sha256"):
        folder = root / kind
        files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
        if files:
            out.append(Listed(kind, f"{len(files)} files", folder, sum(f.stat().st_size for f in files),
                              max(f.stat().st_mtime for f in files), "text classifiers" if kind == "classifiers"
                              else "file content hashes"))
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def prune(cache_root: Path | None = None, older_than_days: float | None = None, kinds: tuple[str, ...] = KINDS,
          dry_run: bool = False) -> list[Listed]:
    """Remove cache entries not used for ``older_than_days`` (all when None) of the given kinds; entries being
    written by a live process (their lock is held) are left alone. Returns what was (or would be) removed."""
    from harness.core.atomic import LockTimeout, file_lock

    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else float("inf")
    removed = []
    for item in list_cache(cache_root):
        if item.kind not in kinds or item.last_used > cutoff:
            continue
        if dry_run:
            removed.append(item)
            continue
        lock = item.path.parent / f".{item.path.name}.lock"
        try:
            with file_lock(lock, wait=False):
                shutil.rmtree(item.path, ignore_errors=True)
            lock.unlink(missing_ok=True)
        except LockTimeout:
            logger.info("left %s alone: a running process holds it", item.path)
            continue
        removed.append(item)
    return removed
