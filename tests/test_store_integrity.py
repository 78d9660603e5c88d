"""Caches and stores that cannot lie (issue 19): damaged entries are caught on read and recomputed, a results file
modified after it was written is not reused, and a full disk is a clear message, never a signal.

Every damage here is done to the real files the harness wrote, as a disk, a user or another program would do it;
the reference is always the plain path (no caches) or an unconstrained run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cards import get_dataset_card
from harness.data.testsets import open_eval_data
from harness.engine.options import EvalOptions
from harness.engine.zeroshot import evaluate_dataset
from harness.run.runner import evaluate

from conftest import REPO

CIFAR, KITTI, VOC = "cifar-10", "kitti-distance", "voc-2007-classification"
PAGE = 4096


def _run(loaded, name: str, root: Path, **kw):
    dcard = get_dataset_card(name)
    kw = {"pixel_cache": True, "feature_cache": True, "classifier_cache": False, "batch_size": 7, "workers": 0,
          "progress": False, **kw}
    return evaluate_dataset(loaded, dcard, open_eval_data(dcard, root), EvalOptions(protocol="elevater", **kw))


def _plain(loaded, name: str, root: Path):
    return _run(loaded, name, root, pixel_cache=False, feature_cache=False)


def _entry(cache: Path, kind: str) -> Path:
    entry, = [m.parent for m in (cache / kind).glob("*/meta.json")]
    return entry


def _scribble(path: Path, start: int, data: bytes) -> None:
    """Overwrite bytes of a file in place: same size, same mtime (as a bad disk or another program would)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _changed(old: bytes, seed: int = 0) -> bytes:
    """Random bytes of the same length, each one different from the byte it replaces."""
    noise = np.random.default_rng(seed).integers(1, 256, len(old), dtype=np.uint8)
    return (np.frombuffer(old, dtype=np.uint8) ^ noise).tobytes()


# ----------------------------------------------------------------------------------------------------------------------
# integrity on read: every cache entry carries checksums written with it


def test_corrupt_bytes_in_the_middle_of_the_pixel_cache_are_caught_and_recomputed(tiny_loaded, demo_root, cache,
                                                                                   caplog):
    plain = _plain(tiny_loaded, CIFAR, demo_root)
    assert _run(tiny_loaded, CIFAR, demo_root, feature_cache=False).predictions.source.startswith("decoded")
    array = _entry(cache, "pixels") / "pixels.npy"
    middle = array.stat().st_size // 2 - 1500
    _scribble(array, middle, _changed(array.read_bytes()[middle:middle + 3000]))  # the red team's 3,000 bytes

    again = _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    np.testing.assert_array_equal(again.predictions.probs, plain.predictions.probs)
    assert again.metrics == plain.metrics
    assert "damaged" in caplog.text and "checksum" in caplog.text and str(array.parent) in caplog.text
    # the entry was dropped: the next run rebuilds it, and the one after reads a good one
    assert not (array.parent / "meta.json").exists()
    rebuilt = _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    assert rebuilt.predictions.source == "decoded (pixel cache written)"
    warm = _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    assert warm.predictions.source == "pixel cache"
    np.testing.assert_array_equal(warm.predictions.probs, plain.predictions.probs)


def test_corrupt_rows_of_the_feature_cache_are_caught_and_recomputed(tiny_loaded, demo_root, cache, caplog):
    plain = _plain(tiny_loaded, CIFAR, demo_root)
    _run(tiny_loaded, CIFAR, demo_root)
    array = _entry(cache, "features") / "features.npy"
    features = np.load(array)
    offset = array.stat().st_size - features.nbytes
    rows = np.random.default_rng(1).standard_normal((5, features.shape[1]))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(features.dtype)  # unit rows, as features are
    _scribble(array, offset + 3 * features.shape[1] * features.itemsize, rows.tobytes())  # plausible, finite rows

    again = _run(tiny_loaded, CIFAR, demo_root)
    assert again.predictions.source != "feature cache"
    np.testing.assert_array_equal(again.predictions.probs, plain.predictions.probs)
    assert "damaged" in caplog.text and str(array.parent) in caplog.text
    assert _run(tiny_loaded, CIFAR, demo_root).predictions.source == "feature cache"  # written again, and good


def test_a_corrupt_classifier_cache_is_caught_and_recomputed(tiny_loaded, demo_root, cache, caplog):
    reference = _plain(tiny_loaded, CIFAR, demo_root)
    cached = _run(tiny_loaded, CIFAR, demo_root, pixel_cache=False, feature_cache=False, classifier_cache=True)
    np.testing.assert_array_equal(cached.predictions.probs, reference.predictions.probs)
    entry, = (cache / "classifiers").glob("*.pt")
    weights = torch.load(entry, weights_only=True)
    blob = entry.read_bytes()
    at = blob.find(weights.numpy().tobytes()[:64])
    assert at > 0, "the tensor's bytes are stored uncompressed"
    finite = np.random.default_rng(2).standard_normal(50).astype(np.float32).tobytes()
    _scribble(entry, at + 400, finite)  # still a loadable, finite tensor of the right shape

    again = _run(tiny_loaded, CIFAR, demo_root, pixel_cache=False, feature_cache=False, classifier_cache=True)
    assert "ignoring classifier cache" in caplog.text and "checksum" in caplog.text
    np.testing.assert_array_equal(again.predictions.probs, reference.predictions.probs)
    assert torch.equal(torch.load(entry, weights_only=True), weights), "written again"


@pytest.mark.parametrize("kind", ["pixels", "features"])
def test_an_empty_cache_file_is_rebuilt_not_a_failure(tiny_loaded, demo_root, cache, caplog, kind):
    plain = _plain(tiny_loaded, CIFAR, demo_root)
    _run(tiny_loaded, CIFAR, demo_root, feature_cache=(kind == "features"))
    array = _entry(cache, kind) / f"{kind}.npy"
    array.write_bytes(b"")

    again = _run(tiny_loaded, CIFAR, demo_root, feature_cache=(kind == "features"))  # no EOFError
    np.testing.assert_array_equal(again.predictions.probs, plain.predictions.probs)
    assert "damaged" in caplog.text
    assert array.stat().st_size > 0 and (array.parent / "meta.json").is_file(), "rebuilt"


def test_a_pixel_build_that_cannot_write_its_rows_is_not_committed(tiny_loaded, demo_root, cache, caplog):
    """A write that fails half way (here: a file-size limit, EFBIG, the same as ENOSPC) abandons the entry with one
    warning; the pass goes on and gives the plain path's probabilities; no temp file stays."""
    import resource
    import signal

    from harness.store.pixels import PixelBuild, pixel_entry, plan_pixels
    from harness.engine.protocols import elevater_transform

    data = open_eval_data(get_dataset_card(CIFAR), demo_root)
    entry = pixel_entry(data, plan_pixels(elevater_transform(tiny_loaded.card, True)[0]))
    build = PixelBuild.start(entry)
    assert build.active
    rows = torch.zeros((10, *entry.shape[1:]), dtype=torch.uint8)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * PAGE, old_limit[1]))
        build.write(np.arange(0, 10), rows)  # past the limit: EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    build.write(np.arange(10, 20), rows)  # ignored after a failure
    build.finish({})
    build.close()
    assert not (entry.folder / "meta.json").exists() and not list(entry.folder.glob(".*.tmp"))
    assert sum("out of space" in r.message for r in caplog.records if r.levelname == "WARNING") == 1


def test_entries_without_checksums_or_with_crc32_or_an_unknown_hash(tmp_path, caplog, monkeypatch):
    """An entry of an older harness (no checksums) is a miss; the CRC-32 fallback (no xxhash) checks as well as
    XXH3; an entry whose hash this environment cannot compute is a miss, never trusted."""
    from harness.store import integrity
    from harness.store.entries import CacheEntry

    rows = np.random.default_rng(3).standard_normal((500, 64)).astype(np.float32)
    entry = CacheEntry("features", tmp_path / "features" / "e", "k" * 64, rows.shape, None)
    monkeypatch.setattr(integrity, "ALGORITHM", "crc32")
    assert entry.write(rows, {})
    meta = json.loads(entry.meta_path.read_text())
    assert meta["checksum"]["algorithm"] == "crc32" and len(meta["checksum"]["blocks"]) == 8
    np.testing.assert_array_equal(entry.load(mmap=False)[0], rows)
    np.testing.assert_array_equal(entry.load()[0][100:200], rows[100:200])  # the memory-mapped, checked read
    _scribble(entry.array_path, entry.array_path.stat().st_size - 4, b"\0\0\0\1")
    assert entry.load(mmap=False) is None and "damaged" in caplog.text and not entry.meta_path.exists()
    monkeypatch.undo()

    assert entry.write(rows, {})
    meta = json.loads(entry.meta_path.read_text())
    for record, expected in ((None, "no checksums"), ({**meta["checksum"], "algorithm": "md7"}, "cannot compute")):
        changed = {k: v for k, v in meta.items() if k != "checksum"}
        if record is not None:
            changed["checksum"] = record
        entry.meta_path.write_text(json.dumps(changed))
        caplog.clear()
        assert entry.load() is None and expected in caplog.text
        assert entry.array_path.exists(), "a miss, rebuilt by the next write; not damage"


def test_an_atomic_write_that_does_not_fit_names_the_folder_and_leaves_no_temp(tmp_path):
    import resource
    import signal

    from harness.core.atomic import OutOfSpaceError, write_npy
    from harness.core.errors import HarnessError

    target = tmp_path / "out" / "probs.npy"
    target.parent.mkdir()
    big = np.zeros((64, 1024), dtype=np.float32)  # 256 KB
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
        with pytest.raises(OutOfSpaceError) as caught:
            write_npy(target, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(caught.value)
    assert isinstance(caught.value, HarnessError) and isinstance(caught.value, OSError)
    assert str(target.parent) in message and f"{big.nbytes + 128:,} bytes" in message and "\n" not in message
    assert list(target.parent.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------------
# results: the data files carry their hash in the result JSON


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_probs_file_modified_in_place_is_not_reused(demo_root, tmp_path, cache, caplog):
    opts = EvalOptions(results_root=tmp_path / "r", progress=False, workers=0, batch_size=16)
    evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, opts)
    folder = tmp_path / "r" / "tiny_demo_clip" / "elevater"
    res = json.loads((folder / f"{CIFAR}.json").read_text())
    probs_file = folder / res["files"]["probs"]
    assert res["files_sha256"] == {role: _sha256(folder / name) for role, name in res["files"].items()}
    good = np.load(probs_file)
    bad = good.copy()
    bad[3] = bad[3][::-1]  # another (valid) distribution for one image: same size, same header
    blob = probs_file.read_bytes()
    _scribble(probs_file, len(blob) - good.nbytes, bad.tobytes())

    summary = evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, opts)
    assert list(summary.done) == [CIFAR] and list(summary.skipped) == [KITTI]
    assert probs_file.name in caplog.text and "recomputing" in caplog.text
    res = json.loads((folder / f"{CIFAR}.json").read_text())
    np.testing.assert_array_equal(np.load(folder / res["files"]["probs"]), good)
    assert not probs_file.exists(), "the modified file went with the result it belonged to"
    # backward compatible: a result written before the hashes existed is reused as before
    del res["files_sha256"]
    (folder / f"{CIFAR}.json").write_text(json.dumps(res))
    assert list(evaluate("tiny_demo_clip", [CIFAR], demo_root, opts).skipped) == [CIFAR]


# ----------------------------------------------------------------------------------------------------------------------
# a full disk: a clear message, never a signal (subprocesses: a real small filesystem, or a file-size limit)


def _tmpfs_possible() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _run_with_little_space(folder: Path, nbytes: int, argv: list[str], env: dict, keep: Path | None = None
                           ) -> subprocess.CompletedProcess:
    """``argv`` with only ``nbytes`` of room: a tmpfs of that size mounted on ``folder`` in a private mount
    namespace (as root), else a file-size limit of ``nbytes`` (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with
    EFBIG). ``keep``: where the tmpfs's content is copied before the namespace (and the tmpfs) goes away."""
    folder.mkdir(parents=True, exist_ok=True)
    if _tmpfs_possible():
        copy = f'cp -a "$d/." "{keep}/"' if keep is not None else "true"
        script = f'd="$1"; shift; mount -t tmpfs -o size={nbytes} tmpfs "$d" || exit 99; "$@"; rc=$?; {copy}; exit $rc'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *argv], env=env,
                              capture_output=True, text=True, timeout=900)

    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, preexec_fn=limit)
    if keep is not None:
        shutil.copytree(folder, keep, dirs_exist_ok=True)
    return out


@pytest.fixture(scope="module")
def bigger_demo(tmp_path_factory) -> Path:
    """Three demo datasets with 30 images per class (the crops of cifar-10 and voc are 0.9 and 1.8 MB)."""
    from harness.data.synthetic import make_demo_suite

    root = tmp_path_factory.mktemp("bigger_demo")
    make_demo_suite(root, images_per_class=30, names=(CIFAR, KITTI, VOC))
    return root


def _eval_all(root: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "eval-all", "--model", "tiny_demo_clip", "--data-root", str(root),
            "--datasets", f"{CIFAR},{KITTI},{VOC}", "--results", str(results), "--device", "cpu", "--workers", "0",
            "--batch-size", "7", "--no-progress", *extra]


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def _probs(results: Path, dataset: str) -> np.ndarray:
    folder = results / "tiny_demo_clip" / "elevater"
    return np.load(folder / json.loads((folder / f"{dataset}.json").read_text())["files"]["probs"])


@pytest.fixture(scope="module")
def uncached(bigger_demo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uncached")
    results = folder / "results"
    out = subprocess.run(_eval_all(bigger_demo, results, "--no-cache"), env=_env(HARNESS_CACHE=str(folder / "cache")),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "3 evaluated" in out.stdout, out.stderr[-3000:]
    return results


def _not_a_signal(out: subprocess.CompletedProcess) -> None:
    assert out.returncode >= 0 and out.returncode not in (99, 135, 128 + 7), \
        f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-4000:]


@pytest.mark.slow
def test_a_full_cache_folder_is_one_warning_and_the_run_goes_on_uncached(bigger_demo, uncached, tmp_path):
    cache = tmp_path / "cache"
    results = tmp_path / "results"
    out = _run_with_little_space(cache, 512 * 1024, _eval_all(bigger_demo, results),
                                 _env(HARNESS_CACHE=str(cache)))
    _not_a_signal(out)
    assert out.returncode == 0 and "3 evaluated" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
    warnings = [line for line in out.stderr.splitlines() if " WARNING " in line]
    full = [line for line in warnings if "out of space" in line]
    assert len(full) == 1 and "cache" in full[0] and str(cache) in full[0], "\n".join(warnings)
    for dataset in (CIFAR, KITTI, VOC):
        np.testing.assert_array_equal(_probs(results, dataset), _probs(uncached, dataset))


def _footprint(results: Path, dataset: str) -> tuple[int, int]:
    """(pages a dataset's result takes on a tmpfs, its largest file in bytes): data files, JSON and lock."""
    folder = results / "tiny_demo_clip" / "elevater"
    res = json.loads((folder / f"{dataset}.json").read_text())
    sizes = [(folder / n).stat().st_size for n in res["files"].values()] + [(folder / f"{dataset}.json").stat().st_size]
    return sum(-(-s // PAGE) for s in sizes) + 1, max(sizes)


@pytest.mark.slow
def test_a_full_results_folder_fails_that_dataset_with_the_folder_named_and_leaves_nothing_half_written(
        bigger_demo, uncached, tmp_path):
    small = [_footprint(uncached, d) for d in (CIFAR, KITTI)]
    voc_pages, voc_largest = _footprint(uncached, VOC)
    room_pages = sum(p for p, _ in small) + 4  # the two small results with room to spare; voc cannot fit
    assert voc_pages > 4 + 2 and voc_largest > max(b for _, b in small) + 2 * PAGE
    tmpfs = _tmpfs_possible()
    nbytes = room_pages * PAGE if tmpfs else max(b for _, b in small) + PAGE
    results, kept = tmp_path / "results", tmp_path / "kept"
    kept.mkdir()
    out = _run_with_little_space(results, nbytes, _eval_all(bigger_demo, results, "--no-cache"),
                                 _env(HARNESS_CACHE=str(tmp_path / "cache")), keep=kept)
    _not_a_signal(out)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-4000:]
    assert "2 evaluated" in out.stdout and "1 failed" in out.stdout, out.stdout
    failed, = [line for line in out.stdout.splitlines() if "FAILED" in line]
    folder = results / "tiny_demo_clip" / "elevater"
    assert f"FAILED {VOC}:" in failed and str(folder) in failed and "bytes" in failed, failed
    for dataset in (CIFAR, KITTI):
        np.testing.assert_array_equal(_probs(kept, dataset), _probs(uncached, dataset))
    left = sorted(p.name for p in (kept / "tiny_demo_clip" / "elevater").iterdir())
    assert not [n for n in left if n.startswith(VOC) and not n.endswith(".lock")], left
    assert not [n for n in left if n.endswith(".tmp")], left


_RANK1_LIMITED = """
import os, resource, signal, sys
if os.environ.get("LOCAL_RANK") == "1":  # this rank alone cannot write past {limit} bytes into any file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rank_that_cannot_write_its_pixel_rows_does_not_stall_the_others(bigger_demo, uncached, tmp_path):
    """Under torchrun the ranks write their own rows into one shared pixel entry. Rank 1 fails half way (a
    file-size limit): it notes the failure, the ranks stay in step, rank 0 does not commit the entry."""
    script = tmp_path / "rank1_limited.py"
    script.write_text(_RANK1_LIMITED.replace("{limit}", str(512 * 1024)))
    results, cache = tmp_path / "results", tmp_path / "cache"
    argv = _eval_all(bigger_demo, results, "--no-feature-cache")[3:]  # after "-m harness"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), *argv]
    out = subprocess.run(cmd, env=_env(HARNESS_CACHE=str(cache)), capture_output=True, text=True, timeout=900)
    _not_a_signal(out)
    assert out.returncode == 0 and "3 evaluated" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
    assert "out of space" in out.stderr and "not kept" in out.stderr, out.stderr[-4000:]
    for dataset in (CIFAR, KITTI, VOC):
        np.testing.assert_array_equal(_probs(results, dataset), _probs(uncached, dataset))
    committed = {m.parent.name.split("-32x32")[0] for m in (cache / "pixels").glob("*/meta.json")}
    assert committed == {KITTI}, committed  # kitti's 120 crops (368 KB) fit under the limit; the others do not
    assert not list((cache / "pixels").rglob("*.tmp"))
