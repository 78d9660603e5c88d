"""What keeps the caches honest: checksums written with every entry and verified on every read, and a full disk met
with one warning instead of a crash.

- **Array entries** (pixels, features) carry a 64-bit XXH3 hash (CRC-32 where the ``xxhash`` package is missing)
  per block of rows in their ``meta.json`` (a block is :data:`BLOCK_BYTES` of rows, at least one row; at 224 px that
  is 6 crops). XXH3 because a check on every read must keep up with the fastest forward pass: measured on the
  2-core development machine, a checked read of 300 MB of crops from the page cache costs 1.5x a plain read with
  XXH3 (about 4 GB/s, 28,000 crops/s at 224 px) and 3.7x with zlib's CRC-32. The feature cache is read whole and
  checked at load. The pixel cache is read through a memory map one batch at a time by a prefetch thread; it is
  checked block by block as the batches first touch them (:class:`CheckedArray`), so checking overlaps the model's
  forward pass and each block is checked once per pass (cost: ``benchmarks/test_integrity_speed.py``). A mismatch
  drops the entry (``meta.json`` and the array are removed, so the next run rebuilds it) with one warning; the
  damaged rows of a pixel entry are decoded again, so the pass still gets the right pixels.
- **Small files** (classifiers) have a sidecar ``<file>.json`` with their size and sha256, written after the file
  (the commit point) and checked before the file is parsed.
- **Out of space** (ENOSPC, EDQUOT, or EFBIG from a file-size limit) while writing a cache entry abandons that entry;
  :func:`note_out_of_space` warns once per cache folder per process and the run goes on without the entry.

A zero-length, cut-short or unparsable file is damaged like any other: dropped and recomputed, never an error.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.core.errors import HarnessError

logger = logging.getLogger(__name__)

try:
    import xxhash
except ImportError:  # a declared dependency; without it the entries are checked with CRC-32
    xxhash = None

# algorithm -> (hash of a buffer as an int, hex digits a block takes in meta.json)
HASHES: dict[str, tuple[Callable[[Any], int], int]] = {"crc32": (zlib.crc32, 8)}
if xxhash is not None:
    HASHES["xxh3_64"] = (xxhash.xxh3_64_intdigest, 16)
ALGORITHM = "xxh3_64" if xxhash is not None else "crc32"  # what new entries are written with
BLOCK_BYTES = 1 << 20  # bytes of rows per checksum: fine enough that a damaged block costs a few rows


class DamagedCacheError(HarnessError):
    """A cache entry found damaged half way through a read that cannot recompute the rows itself."""


def row_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize


def rows_per_block(shape: tuple[int, ...], dtype: Any) -> int:
    return max(1, BLOCK_BYTES // max(1, row_bytes(shape, dtype)))


def _hash(rows: np.ndarray, algorithm: str | None = None) -> int:
    return HASHES[algorithm or ALGORITHM][0](memoryview(np.ascontiguousarray(rows)).cast("B"))


def _record(rows: int, sums: list[int]) -> dict:
    width = HASHES[ALGORITHM][1]
    return {"algorithm": ALGORITHM, "rows_per_block": rows, "blocks": "".join(f"{s:0{width}x}" for s in sums)}


def array_checksum(array: np.ndarray) -> dict:
    """The checksum record of an array held in memory (what ``np.save`` writes after its header)."""
    rows = rows_per_block(array.shape, array.dtype)
    return _record(rows, [_hash(array[i:i + rows]) for i in range(0, len(array), rows)])


def file_checksum(path: Path, offset: int, shape: tuple[int, ...], dtype: Any) -> dict:
    """The checksum record of an array file's rows as they are on disk (plain reads: no memory map, no SIGBUS)."""
    size, rows = row_bytes(shape, dtype), rows_per_block(shape, dtype)
    sums = []
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, shape[0], rows):
            want = min(rows, shape[0] - start) * size
            data = f.read(want)
            if len(data) != want:
                raise OSError(errno.EIO, f"{path}: {len(data)} bytes where {want} were written")
            sums.append(HASHES[ALGORITHM][0](data))
    return _record(rows, sums)


class Checksums:
    """A meta file's checksum record, parsed: the algorithm, rows per block and one hash per block."""

    def __init__(self, algorithm: str, rows: int, sums: list[int]):
        self.algorithm, self.rows, self.sums = algorithm, rows, sums

    def matches(self, block: int, rows: np.ndarray) -> bool:
        return _hash(rows, self.algorithm) == self.sums[block]

    def bad_blocks(self, array: np.ndarray) -> list[int]:
        return [b for b in range(len(self.sums)) if not self.matches(b, array[b * self.rows:(b + 1) * self.rows])]


def parse_checksum(record: Any, shape: tuple[int, ...]) -> Checksums | str:
    """A meta file's checksum record, or why it cannot be used: "malformed", or "unsupported" (an algorithm this
    environment cannot compute)."""
    if not isinstance(record, dict):
        return "malformed"
    algorithm, rows, blocks = record.get("algorithm"), record.get("rows_per_block"), record.get("blocks")
    if algorithm not in HASHES:
        return "unsupported" if isinstance(algorithm, str) else "malformed"
    width = HASHES[algorithm][1]
    if not isinstance(rows, int) or rows < 1 or not isinstance(blocks, str) \
            or len(blocks) != width * -(-shape[0] // rows):
        return "malformed"
    try:
        return Checksums(algorithm, rows, [int(blocks[i:i + width], 16) for i in range(0, len(blocks), width)])
    except ValueError:
        return "malformed"


def npy_header(dtype: Any, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of this dtype and shape."""
    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                                     "shape": tuple(shape)})
    return buf.getvalue()


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Every byte of ``data`` at ``offset``: a plain write, whose failure (ENOSPC, EIO) is an OSError, never a
    signal as a write through a memory map is."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


class CheckedArray:
    """The rows of a memory-mapped array, each block checked against its hash the first time a read touches it.
    Reads (:meth:`read`, slicing) return a copy in memory. A block that does not match goes to ``on_damage(start,
    stop)``, which returns the right rows (kept in memory and used from then on) or raises."""

    def __init__(self, array: np.ndarray, checksums: Checksums, on_damage: Callable[[int, int], np.ndarray]):
        self._array, self._sums, self._on_damage = array, checksums, on_damage
        self._rows = checksums.rows
        self._checked: set[int] = set()
        self._fresh: dict[int, np.ndarray] = {}  # block -> its rows recomputed
        self._lock = threading.Lock()
        self.shape, self.dtype = array.shape, array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a CheckedArray is read in contiguous ranges of rows")
            return self.read(start, max(start, stop))
        index = range(len(self))[key]
        return self.read(index, index + 1)[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, len(self))
        return out if dtype is None else out.astype(dtype)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``, checked, as a writable array of their own."""
        with self._lock:
            if stop > start:
                for block in range(start // self._rows, (stop - 1) // self._rows + 1):
                    self._check(block)
            out = np.array(self._array[start:stop])
            for block, fresh in self._fresh.items():
                lo = block * self._rows
                a, b = max(lo, start), min(lo + len(fresh), stop)
                if a < b:
                    out[a - start:b - start] = fresh[a - lo:b - lo]
        return out

    def _check(self, block: int) -> None:
        if block in self._checked:
            return
        lo, hi = block * self._rows, min((block + 1) * self._rows, len(self))
        if not self._sums.matches(block, self._array[lo:hi]):
            fresh = np.asarray(self._on_damage(lo, hi), dtype=self.dtype)
            self._fresh[block] = fresh.reshape((hi - lo, *self.shape[1:]))
        self._checked.add(block)


def read_rows(array: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a cache array (checked when it is a :class:`CheckedArray`) as a writable copy. The
    mapped pages of those rows are then released from this process (see :func:`release_pages`)."""
    out = array.read(start, stop) if isinstance(array, CheckedArray) else np.array(array[start:stop])
    release_pages(array._array if isinstance(array, CheckedArray) else array, start, stop)
    return out


def release_pages(array: Any, start: int, stop: int) -> None:
    """Drop the pages of rows ``start:stop`` of a memory-mapped array from this process's mapping (madvise
    MADV_DONTNEED). A pass reads each row once; without this, every page read stays resident in the process, so
    its RSS grows with the dataset (7.5 GB for ImageNet at 224 px) although the pages are clean page cache. The
    file's pages stay in the kernel's page cache; a later read maps them again. Linux only; elsewhere a no-op."""
    import mmap

    if not isinstance(array, np.memmap) or stop <= start or not hasattr(mmap, "MADV_DONTNEED"):
        return
    rows = array[start:stop]
    page = mmap.PAGESIZE
    begin = rows.ctypes.data // page * page  # whole pages inside the mapping (a neighbour's page refaults cheaply)
    end = -(-(rows.ctypes.data + rows.nbytes) // page) * page
    try:
        _libc().madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), mmap.MADV_DONTNEED)
    except (OSError, AttributeError):
        pass


_LIBC: Any = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _LIBC


# ----------------------------------------------------------------------------------------------------------------------
# out of space: one warning per cache folder


_FULL: set[str] = set()


def note_out_of_space(cache_root: Path, exc: OSError, what: str, path: Path | None = None,
                      needed: int | None = None) -> None:
    """A cache write did not fit: warn (once per cache folder in this process) and go on without that entry."""
    from harness.core.atomic import space_message

    line = getattr(exc, "line", None) or space_message(path or cache_root / "?", needed, exc)
    key = str(Path(cache_root).resolve())
    if key in _FULL:
        logger.info("%s: %s; continuing without it", what, line)
        return
    _FULL.add(key)
    logger.warning("%s. Continuing without %s; cache entries that do not fit are skipped "
                   "without another warning (free some space, or set HARNESS_CACHE to another folder).", line, what)


# ----------------------------------------------------------------------------------------------------------------------
# small files with a sidecar checksum (the classifier cache)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _remove(*files: Path) -> None:
    for f in files:
        try:
            f.unlink()
        except OSError:
            pass


def read_verified(path: Path, what: str) -> bytes | None:
    """The bytes of ``path`` when they match the size and sha256 its sidecar records; None when absent, without a
    sidecar (written before checksums, or its writer stopped) or damaged (both files are then removed; a warning)."""
    from harness.core.safe_read import load_json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = load_json(_sidecar(path), "cache meta")
        data = path.read_bytes()
    except FileNotFoundError:
        logger.info("ignoring %s %s: no checksum beside it (an older harness wrote it); recomputing", what, path)
        return None
    except (OSError, ValueError) as exc:
        record, data = {"unreadable": str(exc)}, b""
    if not isinstance(record, dict) or record.get("bytes") != len(data) \
            or record.get("sha256") != hashlib.sha256(data).hexdigest():
        logger.warning("ignoring %s %s: it does not match its checksum (damaged); removed, recomputing", what, path)
        _remove(_sidecar(path), path)
        return None
    return data


def write_verified(path: Path, data: bytes, cache_root: Path, what: str) -> bool:
    """Write ``data`` as ``path`` and then its sidecar checksum (the commit point). A write that does not fit is
    noted (:func:`note_out_of_space`), any other failure warned about; either way the run goes on (False)."""
    from harness.core.atomic import is_out_of_space, write_bytes, write_json

    path = Path(path)
    try:
        _remove(_sidecar(path))  # a reader meanwhile sees no checksum: a miss, never the old one on the new file
        write_bytes(path, data)
        write_json(_sidecar(path), {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    except OSError as exc:
        if not is_out_of_space(exc):
            logger.warning("could not write %s %s (%s); continuing without it", what, path, exc)
            return False
        _remove(path)
        note_out_of_space(cache_root, exc, what, path, len(data))
        return False
    return True
