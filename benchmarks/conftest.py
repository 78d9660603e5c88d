"""Shared fixtures for the throughput benchmarks, and the summary table printed at the end of `make bench`.

One generated JPEG set is written once per session in two layouts holding byte-identical files:

* the ELEVATER toolkit's iris layout for the ``cifar-10`` card (``val.zip`` + ``test.txt`` + ``labels.txt``), which
  is what ``harness.run.runner.evaluate`` reads;
* a torchvision ImageFolder tree (10 class folders) with the same JPEGs, which the OpenCLIP-style baseline reads.

Each benchmark records its images/s in the ``throughput`` fixture (a :class:`Registry`); ``pytest_terminal_summary``
prints them side by side with their ratios to the forward-only limit and to the decode-then-forward bounds. Nothing here asserts a timing: timings
depend on the machine, so they are reported, never tested.

Sizes can be changed with environment variables (defaults keep ``make bench`` around a minute on 2 cores):
``BENCH_IMAGES`` (3000), ``BENCH_WIDTH`` x ``BENCH_HEIGHT`` (256 x 192), ``BENCH_ROUNDS`` (3), ``BENCH_WORKERS`` (2).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

N_IMAGES = int(os.environ.get("BENCH_IMAGES", "3000"))
IMAGE_SIZE = (int(os.environ.get("BENCH_WIDTH", "256")), int(os.environ.get("BENCH_HEIGHT", "192")))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
BATCH_SIZE = 64
MODEL_CARD = "tiny_demo_clip"
DATASET_CARD = "cifar-10"

_RESULTS = pytest.StashKey[dict]()


@dataclass
class BenchData:
    """The generated JPEG set: the same files as an ELEVATER iris dataset and as an ImageFolder tree."""
    data_root: Path  # ELEVATER data root (holds classification/cifar_10_20211007/...)
    imagefolder: Path  # <imagefolder>/<label>_<classname>/<index>.jpg
    labels: list[int]
    size: tuple[int, int]
    files: list[Path] = field(default_factory=list)  # ImageFolder file of dataset index i

    @property
    def n(self) -> int:
        return len(self.labels)


@dataclass
class Throughput:
    name: str
    images_per_second: float
    seconds: float  # wall seconds of the round the rate comes from (the fastest measured round)
    cpu_seconds: float | None = None  # this process's CPU seconds in that round (all its threads, not workers)
    note: str = ""
    others: float | None = None  # cores kept busy by OTHER processes during that round (noise indicator)


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory) -> BenchData:
    """N_IMAGES class-dependent JPEGs (labels i % 10), written once as ELEVATER iris data and as an ImageFolder."""
    from harness.cards import get_dataset_card
    from harness.data.synthetic import write_iris

    card = get_dataset_card(DATASET_CARD)
    root = tmp_path_factory.mktemp("bench_data")
    labels = [i % card.num_classes for i in range(N_IMAGES)]
    folder = write_iris(card, root / "elevater", labels, seed=0, size=IMAGE_SIZE)

    # Extract the very same JPEG bytes into class folders; "<label>_<name>" sorts in label order (10 classes).
    imagefolder = root / "imagefolder"
    class_dirs = [imagefolder / f"{c}_{name.replace(' ', '_')}" for c, name in enumerate(card.classnames)]
    for d in class_dirs:
        d.mkdir(parents=True)
    files: list[Path] = []
    with zipfile.ZipFile(folder / card.eval_spec.files[0]) as zf:
        entries = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        assert len(entries) == N_IMAGES
        for i, (entry, label) in enumerate(zip(entries, labels)):
            assert entry.endswith(f"{i:05d}.jpg")
            path = class_dirs[label] / f"{i:05d}.jpg"
            path.write_bytes(zf.read(entry))
            files.append(path)
    return BenchData(data_root=root / "elevater", imagefolder=imagefolder, labels=labels, size=IMAGE_SIZE,
                     files=files)


@pytest.fixture(scope="session")
def tiny_loaded():
    """The tiny demo model (random weights, seed 0), built once and shared by every benchmark."""
    from harness.cards import get_model_card
    from harness.models import build_model

    return build_model(get_model_card(MODEL_CARD), device="cpu", precision="fp32")


# Row keys used by test_throughput.py (order = table order).
FORWARD = "(a) forward limit"
FORWARD_1T = "(a1) forward, 1 torch thread"
DECODE = "(b) decode+resize"
DECODE_HARNESS = "(b') decode+resize, harness dataset"
OPENCLIP = "(c) openclip-style loop"
HARNESS = "(d) harness eval"
HARNESS_PASS = "(d') harness image pass only"
# what-if rows: the two loops again with the main process on one intra-op thread (diagnostics, not the baseline)
OPENCLIP_1T = "(c1) openclip-style loop, main 1 thread"
HARNESS_1T = "(d1) harness eval, main 1 thread"
# the caches (test_caches_speed.py)
COLD_WRITE = "(d2) cold eval, pixel cache written"
WARM = "(e) warm pixel cache eval"
WARM_PASS = "(e') warm pixel cache, image pass"
RESCORE = "(f) rescore from cached features"
PROCESS = "(g) whole process `harness eval`"
ROW_ORDER = (FORWARD, FORWARD_1T, DECODE, DECODE_HARNESS, OPENCLIP, HARNESS, HARNESS_PASS, OPENCLIP_1T, HARNESS_1T,
             COLD_WRITE, WARM, WARM_PASS, RESCORE, PROCESS)


class Registry(dict):
    """name -> Throughput (plus a few non-timing entries under keys starting with '_'), read by the summary.

    The row names and run settings are class attributes, so the benchmark module needs no import of this conftest.
    """
    (FORWARD, FORWARD_1T, DECODE, DECODE_HARNESS, OPENCLIP, HARNESS, HARNESS_PASS, OPENCLIP_1T, HARNESS_1T,
     COLD_WRITE, WARM, WARM_PASS, RESCORE, PROCESS) = ROW_ORDER
    ROUNDS, WORKERS, BATCH_SIZE, MODEL_CARD, DATASET_CARD = ROUNDS, WORKERS, BATCH_SIZE, MODEL_CARD, DATASET_CARD

    def record(self, name: str, images_per_second: float, seconds: float, cpu_seconds: float | None = None,
               note: str = "", others: float | None = None) -> Throughput:
        entry = Throughput(name, images_per_second, seconds, cpu_seconds, note, others)
        self[name] = entry
        return entry


@pytest.fixture(scope="session")
def throughput(request) -> Registry:
    """The session's results registry; the row names and settings are attributes of the fixture value."""
    reg = request.config.stash.get(_RESULTS, None)
    if reg is None:
        reg = request.config.stash[_RESULTS] = Registry()
    return reg


# ----------------------------------------------------------------------------------------------------------------------
# the summary table

def _bounds(reg: dict, cores: int, workers: int) -> dict[str, float]:
    """The ceilings the loop benchmarks are compared against (all in images/s).

    f   = forward limit (a): the model alone on ready tensors, with torch's default intra-op threads.
    d   = decode+resize rate (b) of ONE process (one core), no model.
    c_f = the CPU seconds per image the forward costs at best: process CPU time per image of (a) or of (a1), the same
          forward on one torch thread, whichever is lower (extra intra-op threads on a tiny model mostly spin).

    serial = 1 / (1/d + 1/f): decode an image, then run the model on it, in one process, nothing overlapped: the
             "decode-then-forward" bound of a single process (what a loop with no DataLoader workers can reach).
    cores  = min(f, W*d, C / (1/d + c_f)): the decode-then-forward bound scaled to the machine: W worker processes
             decode while the main process runs the model, on C cores. Every image needs 1/d core-seconds of
             decoding and c_f core-seconds of forward, and C cores supply C core-seconds per second, so no schedule
             beats C / (1/d + c_f); nor the forward alone (f); nor W workers decoding flat out (W*d). With a
             single-threaded forward (c_f = 1/f_1) and W = C this is exactly C x the serial bound computed with f_1.
    naive  = W * serial: the serial bound times the number of decode workers, for reference only: it counts the
             forward's cores twice when the forward already uses several (c_f > 1/f).
    """
    nan = float("nan")
    f = reg[FORWARD].images_per_second if FORWARD in reg else nan
    d = reg[DECODE].images_per_second if DECODE in reg else nan
    costs = [t.cpu_seconds / (t.images_per_second * t.seconds) for t in (reg.get(FORWARD), reg.get(FORWARD_1T))
             if t is not None and t.cpu_seconds]
    c_f = min(costs) if costs else 1.0 / f
    serial = 1.0 / (1.0 / d + 1.0 / f)
    cores_bound = min(f, workers * d, cores / (1.0 / d + c_f))
    return {"f": f, "d": d, "c_f": c_f, "serial": serial, "cores": cores_bound, "naive": workers * serial}


def _cache_targets(reg: dict, b: dict, w) -> None:
    """The caches' speed goals, as ratios measured in this run (reported, never asserted)."""
    def verdict(x: float, target: float) -> str:
        return f"{x:.3f} (>= {target:g}: {'met' if x >= target else 'NOT met'})"

    parts = []
    if WARM in reg:
        parts.append(f"warm pixel cache / forward limit = {verdict(reg[WARM].images_per_second / b['f'], 0.9)}")
    if RESCORE in reg and HARNESS in reg:
        parts.append(f"rescore / cold eval = "
                     f"{verdict(reg[RESCORE].images_per_second / reg[HARNESS].images_per_second, 20)}")
    if PROCESS in reg and HARNESS_PASS in reg:
        parts.append(f"whole process / in-process image pass = "
                     f"{verdict(reg[PROCESS].images_per_second / reg[HARNESS_PASS].images_per_second, 0.6)}")
    if parts:
        w("cache targets (reported, never asserted): " + "; ".join(parts))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reg = config.stash.get(_RESULTS, None)
    if not reg:
        return
    import math

    import torch

    cores = os.cpu_count() or 1
    b = _bounds(reg, cores, WORKERS)
    w = terminalreporter.write_line
    width = 124
    w("")
    w("=" * width)
    w(f"Zero-shot throughput: {reg.get('_n', N_IMAGES)} JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} -> {MODEL_CARD} "
      f"(32 px), batch {BATCH_SIZE}, CPU, {cores} cores, torch threads {torch.get_num_threads()}, {WORKERS} "
      f"DataLoader workers; fastest of {reg.get('_rounds', ROUNDS)} timed round(s)")
    w("-" * width)
    # Ratio columns:
    #   x forward limit: share of the model-only rate (a); 1.0 would mean reading the images costs nothing.
    #   x serial bound:  against 1/(1/d + 1/f), decode-then-forward in one process: a loop without workers can reach
    #                    1.0 at most, a loop with W workers should beat it (it overlaps decoding and the model).
    #   x cores bound:   against min(f, W*d, C/(1/d + c_f)), the best any schedule of the same decode and forward work
    #                    can do on these C cores with W decode workers: 1.0 is perfect overlap with zero overhead.
    #   others:          cores kept busy by processes outside this benchmark during the round; > 0.1 means noise.
    w(f"{'benchmark':38s} {'images/s':>9s} {'x forward':>10s} {'x serial':>9s} {'x cores':>8s} {'others':>7s}  note")
    w(f"{'':38s} {'':>9s} {'limit':>10s} {'bound':>9s} {'bound':>8s} {'(cores)':>7s}")
    noisy = False
    for key in ROW_ORDER:
        if key not in reg:
            continue
        t = reg[key]
        r = t.images_per_second
        others = "" if t.others is None else f"{t.others:7.2f}"
        noisy = noisy or (t.others is not None and t.others > 0.1)
        w(f"{key:38s} {r:9.1f} {r / b['f']:10.3f} {r / b['serial']:9.3f} {r / b['cores']:8.3f} {others:>7s}  "
          f"{t.note}")
    w("-" * width)
    w(f"f = forward limit (a) {b['f']:.1f} img/s; c_f = {1e3 * b['c_f']:.4f} ms of CPU per image (cheapest of (a), "
      f"(a1)); d = decode+resize (b), one process, {b['d']:.1f} img/s")
    w(f"serial bound  1/(1/d + 1/f)                = {b['serial']:8.1f} img/s  decode then forward, one process, "
      f"no overlap")
    w(f"cores bound   min(f, W*d, C/(1/d + c_f))   = {b['cores']:8.1f} img/s  W={WORKERS} decode workers beside the "
      f"forward on C={cores} cores")
    w(f"(naive W x serial bound                    = {b['naive']:8.1f} img/s  counts a multi-threaded forward's "
      f"cores twice; reference only)")
    if HARNESS in reg and OPENCLIP in reg:
        h, o = reg[HARNESS].images_per_second, reg[OPENCLIP].images_per_second
        vs_o, vs_s, vs_c = h / o, h / b["serial"], h / b["cores"]

        def verdict(x: float, target: float) -> str:
            return "met" if x >= target else "NOT met"

        w(f"targets (reported, never asserted): harness / openclip-style loop = {vs_o:.3f} (>= 1: "
          f"{verdict(vs_o, 1.0)}); harness / decode-then-forward serial bound = {vs_s:.3f} (>= 0.9: "
          f"{verdict(vs_s, 0.9)}); harness / 2-core bound = {vs_c:.3f} (stricter reading, >= 0.9: "
          f"{verdict(vs_c, 0.9)})")
    _cache_targets(reg, b, w)
    agree = reg.get("_agreement")
    if agree:
        w(agree)
    if noisy:
        w("WARNING: other processes used the CPU during some rounds (column 'others'): those rates are not clean; "
          "rerun on an idle machine.")
    if any(math.isnan(v) for v in b.values()):
        w("(some bounds are nan: run the whole file so that (a) and (b) are measured too)")
    w("=" * width)
