"""What checking the caches' checksums costs on read (harness.store.integrity), against reading without checking,
measured in the same run on a pixel-cache-sized array (default 2,000 crops of 224 x 224 x 3 = 301 MB, in the page
cache: the case where checking is most visible; a read from disk is slower and the check hides behind it):

(r0) plain read  — every batch copied out of the memory map (``np.array(memmap[a:b])``), no check: the baseline;
(r1) checked read — the same batches through :class:`~harness.store.integrity.CheckedArray`, as a run reads them
     (each 1 MiB block's hash, XXH3-64, checked the first time a batch touches it);
(r1c) the same with zlib's CRC-32 as the hash (the fallback without the ``xxhash`` package);
(r2) up-front check — every block checked at load, before the pass (the alternative not chosen), then (r0);
(p0), (p1) the pixel cache's prefetch thread (``iterate_cached``) over the plain and the checked array: the reads
     as the image pass sees them, consuming nothing;
(h) the hash alone over the whole array, XXH3-64 and CRC-32.

Each figure is the fastest of BENCH_ROUNDS rounds (default 3). Ratios are printed at the end of the module; nothing
is asserted about time. Size: ``BENCH_CHECK_ROWS`` (2000) crops of ``BENCH_CHECK_SIZE`` (224) px, batch
``BENCH_CHECK_BATCH`` (256, the GPU default).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

ROWS = int(os.environ.get("BENCH_CHECK_ROWS", "2000"))
SIZE = int(os.environ.get("BENCH_CHECK_SIZE", "224"))
BATCH = int(os.environ.get("BENCH_CHECK_BATCH", "256"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

_FIGURES: dict[str, float] = {}  # name -> seconds (fastest round)


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """A committed pixel-cache entry of ROWS random crops (checksums written with it, as the harness writes them)."""
    from harness.store.entries import CacheEntry

    shape = (ROWS, SIZE, SIZE, 3)
    crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    e = CacheEntry("pixels", tmp_path_factory.mktemp("integrity") / "pixels" / "bench", "k" * 64, shape, "uint8")
    assert e.write(crops, {})
    del crops
    return e


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if not _FIGURES or tr is None:
        return
    nbytes = ROWS * SIZE * SIZE * 3
    base = _FIGURES.get("r0")
    w = tr.write_line
    w("")
    w(f"Cache checksums on read: {ROWS} crops {SIZE}x{SIZE}x3 ({nbytes / 2**20:.0f} MiB, in the page cache), "
      f"batch {BATCH}, 1 MiB blocks, {os.cpu_count()} cores, fastest of {ROUNDS}")
    names = {"r0": "(r0) plain read, no check", "r1": "(r1) checked read (as a run reads)",
             "r1c": "(r1c) checked read, CRC-32 instead", "r2": "(r2) up-front check, then plain read",
             "p0": "(p0) prefetch thread, plain", "p1": "(p1) prefetch thread, checked",
             "xxh3_64": "(h) XXH3-64 alone", "crc32": "(h) CRC-32 alone"}
    for key, label in names.items():
        if key in _FIGURES:
            s = _FIGURES[key]
            ratio = f"{s / base:6.2f} x (r0)" if base else ""
            if key == "p1" and "p0" in _FIGURES:
                ratio += f"   {s / _FIGURES['p0']:6.2f} x (p0)"
            w(f"  {label:40s} {s * 1e3:8.1f} ms  {nbytes / s / 1e9:6.2f} GB/s  {ratio}")
    w("  (reported, never asserted)")


def _fastest(benchmark, name: str, target) -> float:
    times: list[float] = []

    def timed():
        t0 = time.perf_counter()
        out = target()
        times.append(time.perf_counter() - t0)
        return out

    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    best = min(times[-ROUNDS:]) if len(times) > ROUNDS else min(times)
    _FIGURES[name] = best
    benchmark.extra_info["seconds"] = round(best, 4)
    return best


def _batches() -> list[range]:
    return [range(a, min(a + BATCH, ROWS)) for a in range(0, ROWS, BATCH)]


def _plain(entry):
    return np.load(entry.array_path, mmap_mode="r")


def test_r0_plain_read(benchmark, entry):
    def run():
        arr = _plain(entry)
        return sum(int(np.array(arr[r.start:r.stop])[0, 0, 0, 0]) for r in _batches())

    _fastest(benchmark, "r0", run)


def _checksums(entry, algorithm: str | None = None):
    from harness.store.integrity import HASHES, Checksums, parse_checksum

    sums = parse_checksum(json.loads(entry.meta_path.read_text())["checksum"], entry.shape)
    if algorithm is None or algorithm == sums.algorithm:
        return sums
    arr = _plain(entry)
    return Checksums(algorithm, sums.rows, [HASHES[algorithm][0](memoryview(arr[i:i + sums.rows]).cast("B"))
                                            for i in range(0, ROWS, sums.rows)])


@pytest.mark.parametrize("algorithm", [None, "crc32"], ids=["r1", "r1c"])
def test_r1_checked_read(benchmark, entry, algorithm):
    from harness.store.integrity import CheckedArray, read_rows

    sums = _checksums(entry, algorithm)

    def refuse(start, stop):
        raise AssertionError("no block is damaged")

    def run():
        arr = CheckedArray(_plain(entry), sums, refuse)  # a new one: every block is checked again
        return sum(int(read_rows(arr, r.start, r.stop)[0, 0, 0, 0]) for r in _batches())

    _fastest(benchmark, "r1c" if algorithm else "r1", run)
    assert np.array_equal(np.asarray(_plain(entry)[:BATCH]), entry.load()[0][:BATCH])


def test_r2_up_front_check_then_plain_read(benchmark, entry):
    sums = _checksums(entry)

    def run():
        arr = _plain(entry)
        assert sums.bad_blocks(arr) == []
        return sum(int(np.array(arr[r.start:r.stop])[0, 0, 0, 0]) for r in _batches())

    _fastest(benchmark, "r2", run)


@pytest.mark.parametrize("checked", [False, True], ids=["p0_plain", "p1_checked"])
def test_p_prefetch_thread(benchmark, entry, checked):
    from harness.store.pixels import iterate_cached

    def run():
        arr = entry.load()[0] if checked else _plain(entry)
        return sum(len(idx) for _, idx, _ in iterate_cached(arr, {}, _batches(), pin=False))

    _fastest(benchmark, "p1" if checked else "p0", run)


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32"])
def test_h_hash_alone(benchmark, entry, algorithm):
    from harness.store.integrity import HASHES

    if algorithm not in HASHES:
        pytest.skip(f"{algorithm} is not available here")

    def run():
        return HASHES[algorithm][0](memoryview(_plain(entry)).cast("B"))

    _fastest(benchmark, algorithm, run)
