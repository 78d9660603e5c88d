"""Peak memory of one evaluation against the dataset size: every image path at 3,000 and at 15,000 images.

Each (path, size) runs ``harness.run.runner.evaluate`` in a fresh process (so every peak is its own) on generated
ELEVATER-layout JPEGs (256x192, the ``cifar-10`` card) with a tiny ViT at 224 px crops (2 blocks, width 64, patch
32; its config and card are written to a temp folder), batch 64, no classifier or feature cache:

* ``decoded, 0 workers`` and ``decoded, 2 workers``: ``--no-cache``, the main process or 2 DataLoader workers decode;
* ``pixel cache written, 2 workers``: cold, the uint8 crops are written to a new pixel cache entry as they pass;
* ``warm pixel cache``: the crops are read back from that entry (no decoding).

Measured in the evaluating process: its peak RSS (``ru_maxrss``), and, sampled every 0.1 s from
``/proc/<pid>/smaps_rollup``, its anonymous memory, its file-backed resident pages (shared libraries, and the pixel
cache's memory-mapped pages), and the anonymous memory of the main process and its DataLoader workers together
(the sum of their proportional shares, ``Pss_Anon``: a page the processes share since the fork counts once), with
the collated batches in flight in shared memory beside it. The features themselves are a few MB (15,000 x 32 float32 = 1.9 MB).

The figure of merit is each path's ratio of the 15,000-image peak to the 3,000-image peak, measured in the same
run: ~1 means memory independent of N. Printed, never asserted. Generated data: 3,000 distinct JPEGs, the larger
sets repeat them under new zip entry names (decoding is per entry; nothing caches by content).

``BENCH_MEMORY_SIZES`` (default ``3000,15000``) and ``BENCH_MEMORY_PATHS`` (comma-separated path keys: ``decoded-w0``,
``decoded-w2``, ``pixels-cold``, ``pixels-warm``; default all) change what runs. About 4 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIZES = tuple(int(x) for x in os.environ.get("BENCH_MEMORY_SIZES", "3000,15000").split(","))
IMAGE_SIZE = (256, 192)
DATASET = "cifar-10"
# key -> (label, workers, pixel cache)
PATHS = {
    "decoded-w0": ("decoded (--no-cache), 0 workers", 0, False),
    "decoded-w2": ("decoded (--no-cache), 2 workers", 2, False),
    "pixels-cold": ("pixel cache written, 2 workers", 2, True),
    "pixels-warm": ("warm pixel cache", 2, True),
}
CHOSEN = [p for p in os.environ.get("BENCH_MEMORY_PATHS", ",".join(PATHS)).split(",") if p]
TINY_224 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CARD = """name: tiny_224px
description: a tiny ViT at 224 px crops (memory benchmark)
architecture_config: tiny-ViT-224px.json
weights:
  source: random
  seed: 0
preprocess:
  image_size: 224
  mean: [0.48145466, 0.4578275, 0.40821073]
  std: [0.26862954, 0.26130258, 0.27577711]
  interpolation: bicubic
  resize_mode: shortest
  quick_gelu: false
method: baseline
"""
MiB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------------------
# the probe: one evaluation in this (fresh) process, its memory as JSON on the last line of stdout

def _rollup(pid: str) -> dict[str, int]:
    """Bytes of a process's smaps_rollup fields (Rss, Anonymous, Pss_Anon, Pss_Shmem), and RssFile from status."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Anonymous", "Pss_Anon", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _workers() -> list[str]:
    """This process's child processes that run Python (DataLoader workers; not a `git` it runs)."""
    exe = os.path.realpath(sys.executable)
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for pid in children:
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == exe:
                    pids.append(pid)
            except OSError:
                pass
    return pids


def _probe(card: str, data_root: str, workers: int, pixel_cache: bool, results: str) -> dict:
    import resource

    from harness.run.runner import EvalOptions, evaluate

    peak = {"main_anon": 0, "main_file": 0, "tree_anon": 0, "in_flight": 0}
    stop = threading.Event()

    def sample() -> None:
        previous: set[str] = set()
        while not stop.is_set():
            main = _rollup("self")
            pids = _workers()
            # a worker is a child seen in two samples running in an address space of its own: a child that
            # subprocess vfork()s on its way to exec `git` shares ours for a moment, and would count it twice
            kids = [k for k in (_rollup(pid) for pid in pids if pid in previous)
                    if abs(k.get("Rss", 0) - main.get("Rss", 0)) > 0.005 * main.get("Rss", 1)]
            previous = set(pids)
            tree = [main, *kids]
            for key, value in (("main_anon", main.get("Anonymous", 0)), ("main_file", main.get("RssFile", 0)),
                               ("tree_anon", sum(p.get("Pss_Anon", 0) for p in tree)),
                               ("in_flight", sum(p.get("Pss_Shmem", 0) for p in tree))):
                peak[key] = max(peak[key], value)
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    options = EvalOptions(protocol="elevater", batch_size=64, workers=workers, device="cpu", precision="fp32",
                          force=True, results_root=Path(results), progress=False, pixel_cache=pixel_cache,
                          feature_cache=False, classifier_cache=False, predictions_json=False)
    start = time.perf_counter()
    summary = evaluate(card, [DATASET], data_root, options)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    if summary.failed:
        raise SystemExit("\n".join(summary.lines()))
    res = summary.done[DATASET]
    return {"seconds": seconds, "image_source": res["provenance"]["image_source"], "n_images": res["n_images"],
            "main_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **peak}


# ----------------------------------------------------------------------------------------------------------------------
# the benchmark

def _write_sets(root: Path) -> dict[int, Path]:
    """{N: data root} for every size: the smallest written by harness.data.synthetic.write_iris (labels i % 10), the
    larger ones repeating its JPEG bytes under new entry names, in the same ELEVATER iris layout."""
    from harness.cards import get_dataset_card
    from harness.data.synthetic import write_iris

    card = get_dataset_card(DATASET)
    spec = card.eval_spec
    n0 = min(SIZES)
    roots = {n0: root / f"n{n0}"}
    folder = write_iris(card, roots[n0], [i % card.num_classes for i in range(n0)], seed=0, size=IMAGE_SIZE)
    zip_name = spec.files[0]
    with zipfile.ZipFile(folder / zip_name) as zf:
        blobs = [zf.read(f"{Path(zip_name).stem}/{i:05d}.jpg") for i in range(n0)]
    for n in sorted(set(SIZES) - {n0}):
        roots[n] = root / f"n{n}"
        out = roots[n] / card.root_folder
        out.mkdir(parents=True)
        lines = []
        with zipfile.ZipFile(out / zip_name, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(n):
                entry = f"{Path(zip_name).stem}/{i:06d}.jpg"
                zf.writestr(entry, blobs[i % n0])
                lines.append(f"{zip_name}@{entry} {i % card.num_classes}")
        (out / spec.index).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / card.labelmap).write_bytes((folder / card.labelmap).read_bytes())
    return roots


@pytest.fixture(scope="module")
def memory_setup(tmp_path_factory):
    """(card path, {N: data root}, cache folder, results folder) shared by the module's benchmarks."""
    root = tmp_path_factory.mktemp("bench_memory")
    (root / "arch").mkdir()
    (root / "arch" / "tiny-ViT-224px.json").write_text(json.dumps(TINY_224))
    card = root / "arch" / "tiny_224px.yaml"
    card.write_text(CARD)
    return card, _write_sets(root / "data"), root / "cache", root / "results"


_REPORT: dict[str, dict[int, dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def memory_table():
    """The module's table, printed once every chosen path has run."""
    yield
    if not _REPORT:
        return
    w = print
    width = 124
    w("")
    w("=" * width)
    w(f"Peak memory per evaluation vs dataset size: generated JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} -> tiny ViT at "
      f"224 px, batch 64, CPU, {os.cpu_count()} cores; each run a fresh process; MiB")
    w("-" * width)
    w(f"{'path':34s} {'images':>7s} {'s':>6s} {'main RSS':>9s} {'main anon':>10s} {'main file':>10s} "
      f"{'all anon':>9s} {'in flight':>10s}")
    ratios = []
    for key in CHOSEN:
        runs = _REPORT.get(key)
        if not runs:
            continue
        for n in sorted(runs):
            m = runs[n]
            w(f"{PATHS[key][0]:34s} {n:7d} {m['seconds']:6.1f} {m['main_peak_rss'] / MiB:9.0f} "
              f"{m['main_anon'] / MiB:10.0f} {m['main_file'] / MiB:10.0f} {m['tree_anon'] / MiB:9.0f} "
              f"{m['in_flight'] / MiB:10.0f}")
        if len(runs) > 1:
            lo, hi = runs[min(runs)], runs[max(runs)]
            ratios.append(f"{PATHS[key][0]}: main RSS x{hi['main_peak_rss'] / lo['main_peak_rss']:.2f}, "
                          f"main anon x{hi['main_anon'] / max(lo['main_anon'], 1):.2f}, "
                          f"all anon x{hi['tree_anon'] / max(lo['tree_anon'], 1):.2f}")
    w("-" * width)
    if ratios:
        w(f"peak at {max(SIZES):,} / peak at {min(SIZES):,} images (target ~1, reported, never asserted):")
        for line in ratios:
            w("  " + line)
    w("'main file': file-backed pages (shared libraries; on the pixel-cache paths also the entry's memory-mapped "
      "pages, which the kernel can drop); 'all anon': the anonymous memory of the main process and its DataLoader "
      "workers together, pages they share counted once; 'in flight': collated batches in shared memory (at most "
      "workers x prefetch 2 x batch). Peaks but 'main RSS' are sampled every 0.1 s.")
    w("=" * width)


def _run_probe(card: Path, data_root: Path, cache: Path, results: Path, workers: int, pixel_cache: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               HARNESS_CACHE=str(cache))
    args = json.dumps([str(card), str(data_root), workers, pixel_cache, str(results)])
    out = subprocess.run([sys.executable, __file__, args], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("key", list(PATHS))
def test_peak_memory_against_dataset_size(benchmark, memory_setup, key):
    if key not in CHOSEN:
        pytest.skip(f"not in BENCH_MEMORY_PATHS ({','.join(CHOSEN)})")
    card, roots, cache, results = memory_setup
    label, workers, pixel_cache = PATHS[key]
    runs: dict[int, dict] = {}
    if key == "pixels-warm":  # its entries exist when the cold benchmark ran first; make sure of it
        for n in SIZES:
            _run_probe(card, roots[n], cache, results / "warmup", workers, True)

    def measure():
        for n in SIZES:
            if key == "pixels-cold":
                for entry in (cache / "pixels").glob(f"{DATASET}-*"):
                    _remove(entry)
            runs[n] = _run_probe(card, roots[n], cache, results / key, workers, pixel_cache)
        return runs

    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    expected = {"decoded-w0": "decoded", "decoded-w2": "decoded", "pixels-cold": "decoded (pixel cache written)",
                "pixels-warm": "pixel cache"}[key]
    assert {m["image_source"] for m in runs.values()} == {expected}
    _REPORT[key] = runs
    benchmark.extra_info.update({f"main_peak_rss_mib_{n}": round(m["main_peak_rss"] / MiB) for n, m in runs.items()})


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(_probe(*json.loads(sys.argv[1]))))
