"""Array cache entries (pixels, image features) and the `harness cache ls` / `cache prune` views of the cache folder.

An entry is a folder ``<HARNESS_CACHE>/<kind>/<name>-<key16>/`` holding ``<kind>.npy`` and ``meta.json``. The array
is written first (a temp file named with the writer's pid, fsynced, renamed); ``meta.json`` is written last and is the
commit point, so a killed writer leaves no entry that looks finished. A reader checks the key, shape and dtype
recorded against what it expects and treats anything else as a miss (recomputed, never trusted). The meta file's
mtime is the entry's "last used". Rows of images that could not be read are zero and listed in ``errors``.

``meta.json`` also holds a CRC-32 per block of rows, checked on every read (harness.store.integrity): a damaged,
empty or unparsable entry is removed with a warning and recomputed; an entry without checksums (an older harness's)
is a miss. Writing never goes through a memory map: a full disk is an OSError (the entry is abandoned with one
warning, the run goes on), never SIGBUS.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.core import paths
from harness.core.safe_read import load_json
from harness.store.integrity import (CheckedArray, DamagedCacheError, array_checksum, file_checksum, note_out_of_space,
                                     npy_header, parse_checksum, pwrite_all)

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
    # rows start:stop computed afresh, for a damaged block found half way through a memory-mapped read
    recompute: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def array_path(self) -> Path:
        return self.folder / f"{self.kind}.npy"

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f".{self.folder.name}.lock"

    @property
    def cache_root(self) -> Path:
        return self.folder.parent.parent

    @property
    def data_offset(self) -> int:
        return len(npy_header(self.dtype, self.shape))

    def load(self, mmap: bool = True) -> tuple[Any, dict[int, str]] | None:
        """(array, {row: error}) of a committed entry that matches and is intact, else None (logged). With ``mmap``
        the array is a :class:`~harness.store.integrity.CheckedArray` over a memory map, whose blocks are checked as
        reads first touch them; without, the whole array is read and checked here."""
        try:
            meta = load_json(self.meta_path, "cache meta")  # bounded; a refused file is a ValueError: a miss
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable %s cache %s (%s); computing again", self.kind, self.folder, exc)
            return None
        if not isinstance(meta, dict):
            return self._damaged(meta, "its meta.json is not an object")
        try:
            arr = np.load(self.array_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as exc:  # missing, empty, cut short, not an array: damaged like any other entry
            return self._damaged(meta, f"{self.array_path.name} unreadable: {type(exc).__name__}: {exc}")
        dtype_ok = arr.dtype == np.dtype(self.dtype) if self.dtype else arr.dtype.kind == "f"
        if meta.get("key") != self.key or arr.shape != self.shape or not dtype_ok:
            logger.warning("ignoring the %s cache %s: holds %s %s, expected %s %s; computing again", self.kind,
                           self.folder, arr.shape, arr.dtype, self.shape, self.dtype or "float")
            return None
        if "checksum" not in meta:
            logger.warning("ignoring the %s cache %s: it has no checksums (an older harness wrote it); computing "
                           "again", self.kind, self.folder)
            return None
        sums = parse_checksum(meta["checksum"], self.shape)
        if sums == "unsupported":
            logger.warning("ignoring the %s cache %s: its checksums use %s, which this environment cannot compute "
                           "(install xxhash); computing again", self.kind, self.folder, meta["checksum"]["algorithm"])
            return None
        if isinstance(sums, str):
            return self._damaged(meta, "its checksums are malformed")
        size = self.array_path.stat().st_size
        if size != meta.get("bytes"):
            return self._damaged(meta, f"{self.array_path.name} is {size} bytes, {meta.get('bytes')} were written")
        if mmap:
            arr = CheckedArray(arr, sums, self._on_damage(meta))
        elif bad := sums.bad_blocks(arr):
            first = bad[0] * sums.rows
            return self._damaged(meta, f"{len(bad)} block(s) of rows do not match their checksum, the first rows "
                                       f"{first}-{min(first + sums.rows, self.shape[0]) - 1}")
        try:
            os.utime(self.meta_path)
        except OSError:
            pass
        return arr, {int(k): v for k, v in meta.get("errors", {}).items()}

    def _damaged(self, meta: Any, why: str) -> None:
        logger.warning("ignoring the damaged %s cache %s (%s): removed, computing again", self.kind, self.folder, why)
        self._drop(meta)
        return None

    def _drop(self, meta: Any) -> None:
        """Remove the entry read as ``meta`` (not one another process committed since): meta.json, then the array."""
        try:
            if load_json(self.meta_path, "cache meta") != meta:
                return
        except (OSError, ValueError):
            pass
        for f in (self.meta_path, self.array_path):
            try:
                f.unlink()
            except OSError:
                pass

    def _on_damage(self, meta: dict) -> Callable[[int, int], np.ndarray]:
        """What a CheckedArray does with a block that does not match: drop the entry (one warning), then compute
        the rows afresh, or fail the pass when this entry cannot."""
        dropped: list[bool] = []

        def on_damage(start: int, stop: int) -> np.ndarray:
            if not dropped:
                dropped.append(True)
                logger.warning("the %s cache %s is damaged: rows %d-%d do not match their checksum. It is removed "
                               "(the next run rebuilds it)%s", self.kind, self.folder, start, stop - 1,
                               "; this run computes the damaged rows again" if self.recompute else "")
                self._drop(meta)
            else:
                logger.info("%s: rows %d-%d damaged too", self.folder, start, stop - 1)
            if self.recompute is None:
                raise DamagedCacheError(f"The {self.kind} cache {self.folder} is damaged (rows {start}-{stop - 1} "
                                        f"do not match their checksum); it has been removed. Run again: the next "
                                        f"run rebuilds it.")
            return self.recompute(start, stop)

        return on_damage

    def start(self) -> Path:
        """A new temp array file of this entry's shape (header written, rows to fill with plain writes by any
        process). Its space is reserved first, so a full disk fails here (OSError ENOSPC), not half way."""
        from harness.core.atomic import reserve

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.array_path.name}.{os.getpid()}.build.tmp"
        header = npy_header(self.dtype, self.shape)
        size = len(header) + int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            pwrite_all(fd, header, 0)
            reserve(fd, size)
            os.ftruncate(fd, size)  # where nothing could be reserved: a sparse file, write errors say "full"
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def commit(self, tmp: Path, errors: dict[int, str]) -> None:
        """Make a filled temp array this entry: fsync, checksum its rows as stored, rename, then meta.json (the
        commit point; on failure the array goes too)."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        checksum = file_checksum(tmp, self.data_offset, self.shape, self.dtype)
        self.meta_path.unlink(missing_ok=True)  # the entry this replaces, if any, is no longer committed
        os.replace(tmp, self.array_path)
        try:
            self._write_meta(errors, checksum, np.dtype(self.dtype))
        except BaseException:
            self.array_path.unlink(missing_ok=True)
            raise

    def write(self, array: np.ndarray, errors: dict[int, str]) -> bool:
        """Store a whole array (features) as this entry. A disk too full for it abandons the entry with one warning
        per cache folder (False); other OSErrors are raised."""
        from harness.core.atomic import is_out_of_space, write_npy

        array = np.ascontiguousarray(array)
        checksum = array_checksum(array)
        try:
            self.meta_path.unlink(missing_ok=True)
            write_npy(self.array_path, array)
            self._write_meta(errors, checksum, array.dtype)
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            for f in (self.meta_path, self.array_path):
                f.unlink(missing_ok=True)
            note_out_of_space(self.cache_root, exc, f"the {self.kind} cache entry {self.folder.name}")
            return False
        return True

    def _write_meta(self, errors: dict[int, str], checksum: dict, dtype: np.dtype) -> None:
        from harness.core.atomic import write_json

        write_json(self.meta_path, {
            "key": self.key, "kind": self.kind, **self.info, "shape": list(self.shape), "dtype": str(dtype),
            "bytes": self.array_path.stat().st_size, "errors": {str(k): v for k, v in sorted(errors.items())},
            "checksum": checksum, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
                meta = load_json(meta_path, "cache meta")
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
            n = sum(f.suffix == ".pt" for f in files) if kind == "classifiers" else len(files)  # not the checksums
            out.append(Listed(kind, f"{n} files", folder, sum(f.stat().st_size for f in files),
                              max(f.stat().st_mtime for f in files), "text classifiers" if kind == "classifiers"
                              else "file content hashes"))
    return out


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
