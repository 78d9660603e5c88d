"""The sweep-scale paths against the same limits as test_throughput.py (same JPEG set, same tiny model):

(d2) cold eval with the pixel cache on: decode, crop, write the uint8 crops, forward (the entry is removed before
     every round, so every round is cold);
(e)  warm pixel cache: the crops are read from the memory map and normalised in the main process; no JPEG is decoded
     (target: >= 0.9 x the forward limit (a));
(e') the image pass alone inside (e) (``provenance.seconds``);
(f)  rescore: features read from the feature cache, only the classifier matmul and the metric run (target: >= 20 x
     the cold eval (d));
(g)  the whole process: ``python -m harness eval`` as a user runs it (imports, card and data checks, classifier from
     the warm cache, the cold image pass, result files), as images / wall second of the process (target: >= 0.6 x
     the in-process image pass (d')).

Rates are reported in the summary table at the end of ``make bench``; nothing is asserted about time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_throughput import _measure, _record

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cached_run(bench_data, tiny_loaded, throughput, tmp_path_factory):
    """A function running harness.run.runner.evaluate with chosen caches (force=True: every round recomputes)."""
    from harness.core import paths
    from harness.cards import get_dataset_card
    from harness.engine.protocols import make_protocol
    from harness.run.runner import EvalOptions, evaluate
    from harness.engine.zeroshot import cached_classifier

    spec = make_protocol("elevater", tiny_loaded.card, get_dataset_card(throughput.DATASET_CARD),
                         tiny_loaded.preprocess_val)
    cached_classifier(tiny_loaded, spec.classnames, spec.templates)  # warm: the timed runs only pass the images
    results_root = tmp_path_factory.mktemp("bench_cache_results")

    def run(pixel_cache: bool, feature_cache: bool, cold: bool = False):
        if cold:
            shutil.rmtree(paths.cache_dir() / "pixels", ignore_errors=True)
        options = EvalOptions(protocol="elevater", batch_size=throughput.BATCH_SIZE, workers=throughput.WORKERS,
                              device="cpu", precision="fp32", force=True, results_root=results_root, progress=False,
                              pixel_cache=pixel_cache, feature_cache=feature_cache, predictions_json=False)
        summary = evaluate(tiny_loaded.card, [throughput.DATASET_CARD], bench_data.data_root, options,
                           loaded=tiny_loaded)
        assert not summary.failed, summary.lines()
        return summary.done[throughput.DATASET_CARD]

    return run


def test_d2_cold_eval_writing_the_pixel_cache(benchmark, cached_run, bench_data, throughput):
    m = _measure(benchmark, lambda: cached_run(True, False, cold=True), bench_data.n, throughput.ROUNDS)
    _record(throughput, throughput.COLD_WRITE, m, "decode + crop + write uint8 crops + forward, 2 workers")


def test_e_warm_pixel_cache(benchmark, cached_run, bench_data, throughput):
    cached_run(True, False)  # make sure the entry exists (the warm-up round would, too)
    m = _measure(benchmark, lambda: cached_run(True, False), bench_data.n, throughput.ROUNDS)
    prov = m["result"]["provenance"]
    _record(throughput, throughput.WARM, m, "runner.evaluate end to end, crops from the memory map")
    throughput.record(throughput.WARM_PASS, prov["images_per_second"], prov["seconds"], others=m["others"],
                      note=f"same round; {m['wall'] - prov['seconds']:.2f} s of {m['wall']:.2f} s outside the pass")


def test_f_rescore_from_features(benchmark, cached_run, bench_data, throughput):
    cached_run(False, True)  # the features exist
    m = _measure(benchmark, lambda: cached_run(False, True), bench_data.n, throughput.ROUNDS)
    _record(throughput, throughput.RESCORE, m, "runner.evaluate end to end, features from the cache")


def test_g_whole_process_eval(benchmark, bench_data, throughput, tmp_path_factory):
    """`python -m harness eval` in a fresh process, cold (no pixel or feature cache), classifier cache warm."""
    from harness.core import paths

    results = tmp_path_factory.mktemp("bench_process_results")
    env = dict(os.environ, PYTHONPATH=str(REPO), HARNESS_CACHE=str(paths.cache_dir()))
    cmd = [sys.executable, "-m", "harness", "eval", "--model", throughput.MODEL_CARD, "--dataset",
           throughput.DATASET_CARD, "--data-root", str(bench_data.data_root), "--results", str(results),
           "--workers", str(throughput.WORKERS), "--batch-size", str(throughput.BATCH_SIZE), "--device", "cpu",
           "--force", "--no-pixel-cache", "--no-feature-cache", "--no-progress"]

    def run():
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        return time.perf_counter() - t0

    m = _measure(benchmark, run, bench_data.n, throughput.ROUNDS)
    _record(throughput, throughput.PROCESS, m, "python -m harness eval, a new process per round, cold image pass")
