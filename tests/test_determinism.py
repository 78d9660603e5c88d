"""Threads and determinism: the bits of a result do not depend on the launcher's thread count.

MKL's matrix products split their sums over the threads differently at another thread count when a product is short
and deep (few rows, a long inner dimension: a ViT-B MLP's 3072-wide projection on a last batch of a few images, the
text tower on a dataset of 2 classes and 1 template), which changes the last bits (~1e-7). torchrun sets
OMP_NUM_THREADS=1 in every rank, a plain process uses every core, and the pixel cache runs without decode workers:
so the harness fixes the CPU thread count itself (a function of the machine's CPUs and ``--workers`` alone,
:func:`harness.engine.imagepass.cpu_threads`) for the image pass, the classifier and the scores.

The tests use a "wide" architecture (one 768-wide vision block, one 512-wide text block, 16 px images) whose products
are thread-sensitive on the 2-core development machine; :func:`test_the_wide_model_is_thread_sensitive_here` says
whether they are on the machine running the tests (if not, the other tests pass there without showing anything).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

WIDE_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 768, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 1},
}
WIDE_CARD = """name: wide_threads
description: one wide vision block (MLP 3072) and one wide text block (MLP 2048); thread-sensitive products
architecture_config: wide-ViT-16px.json
weights:
  source: random
  seed: 0
preprocess:
  image_size: 16
  mean: [0.48145466, 0.4578275, 0.40821073]
  std: [0.26862954, 0.26130258, 0.27577711]
  interpolation: bicubic
  resize_mode: shortest
  quick_gelu: false
method: baseline
"""
# cifar-10 (30 demo images, batch 7: 5 tokens x 7 images = 35 rows into the 3072-deep product) and hateful-memes
# (2 classes x 1 template: 154 text rows into the 2048-deep product)
DATASETS = ("cifar-10", "hateful-memes")


@pytest.fixture(scope="module")
def wide_card_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wide_card")
    (folder / "wide-ViT-16px.json").write_text(json.dumps(WIDE_CONFIG))
    card = folder / "wide_threads.yaml"
    card.write_text(WIDE_CARD)
    return card


@pytest.fixture(scope="module")
def wide(wide_card_path):
    from harness.models import build_model
    from harness.models.elevater_yaml import resolve_model_card

    return build_model(resolve_model_card(str(wide_card_path)), device="cpu", precision="fp32")


class _Threads:
    """Set torch's thread count as a launcher would leave it (torchrun: 1), restored after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def _evaluate(loaded, demo_root: Path, results: Path, threads: int, **kw) -> dict[str, tuple[str, np.ndarray, dict]]:
    """{dataset: (run key hash, probabilities, result)} of one runner.evaluate at ``threads`` ambient threads."""
    from harness.run.runner import EvalOptions, evaluate

    options = EvalOptions(**{"device": "cpu", "batch_size": 7, "workers": 0, "progress": False, "force": True,
                             "results_root": results, "classifier_cache": False, "pixel_cache": False,
                             "feature_cache": False, **kw})
    with _Threads(threads):
        summary = evaluate(loaded.card, list(DATASETS), demo_root, options, loaded=loaded)
        assert torch.get_num_threads() == threads, "the harness restores the caller's thread count"
    assert not summary.failed, summary.lines()
    out = {}
    for name in DATASETS:
        res = summary.done[name]
        folder = results / loaded.card.name / "elevater"
        out[name] = (res["run_key"]["hash"], np.load(folder / res["files"]["probs"]), res)
    return out


def _assert_same(a: dict, b: dict) -> None:
    for name in DATASETS:
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)
        assert a[name][0] == b[name][0], name


def test_the_wide_model_is_thread_sensitive_here(wide):
    """The premise: on this machine, the wide model's image and text towers give other bits at 1 and 2 threads."""
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tokens = wide.tokenizer(["a photo of a cat.", "a photo of a dog."])
    out = {}
    for n in (1, 2):
        with _Threads(n), torch.inference_mode():
            out[n] = (wide.model.encode_image(x).numpy(), wide.model.encode_text(tokens).numpy())
    image_equal = np.array_equal(out[1][0], out[2][0])
    text_equal = np.array_equal(out[1][1], out[2][1])
    if image_equal and text_equal:
        pytest.skip("this machine's BLAS gives the same bits at 1 and 2 threads for these products: the tests of "
                    "this module pass here without showing anything")
    assert not (image_equal and text_equal)


def test_one_process_gives_the_same_bits_whatever_thread_count_the_launcher_left(wide, demo_root, tmp_path):
    """torchrun leaves OMP_NUM_THREADS=1 in every rank, a plain process all cores: same results, same run key."""
    like_torchrun = _evaluate(wide, demo_root, tmp_path / "one_thread", threads=1)
    plain = _evaluate(wide, demo_root, tmp_path / "two_threads", threads=2)
    _assert_same(like_torchrun, plain)


def test_warm_pixel_cache_gives_the_bits_of_decoding_with_workers(wide, demo_root, tmp_path, monkeypatch):
    """With decode workers the image pass leaves them cores; the warm pixel cache (no workers) runs the model at the
    same thread count, so it reproduces the cold pass bit for bit."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    plain = _evaluate(wide, demo_root, tmp_path / "plain", threads=2, workers=2)
    cold = _evaluate(wide, demo_root, tmp_path / "cold", threads=2, workers=2, pixel_cache=True)
    warm = _evaluate(wide, demo_root, tmp_path / "warm", threads=2, workers=2, pixel_cache=True)
    assert {cold[n][2]["provenance"]["image_source"] for n in DATASETS} == {"decoded (pixel cache written)"}
    assert {warm[n][2]["provenance"]["image_source"] for n in DATASETS} == {"pixel cache"}
    _assert_same(plain, cold)
    _assert_same(plain, warm)


def test_cpu_threads_is_a_function_of_the_machine_and_workers_alone(monkeypatch):
    from harness.engine.imagepass import cpu_threads, fixed_cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert [cpu_threads(w) for w in (0, 2, 8, 16, 20)] == [16, 14, 8, 1, 1]
    before = torch.get_num_threads()
    with fixed_cpu_threads("cuda:0", 0):  # CUDA kernels do not depend on it: left alone
        assert torch.get_num_threads() == before
    with fixed_cpu_threads("cpu", 15):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _cli(args: list[str], env: dict, cwd: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                 "--standalone"] if torchrun else [sys.executable])
    out = subprocess.run([*launcher, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_and_a_default_process_write_the_same_bits(wide_card_path, demo_root, tmp_path):
    """Two gloo ranks (torchrun sets OMP_NUM_THREADS=1 in each) and one process with the environment as a user has
    it (no OMP_NUM_THREADS): the same probabilities and run keys, on the thread-sensitive model."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(REPO), HARNESS_CACHE=str(tmp_path / "cache"))
    common = ["eval-all", "--model", str(wide_card_path), "--datasets", ",".join(DATASETS), "--data-root",
              str(demo_root), "--device", "cpu", "--workers", "0", "--batch-size", "7", "--no-progress", "--no-cache"]
    _cli([*common, "--results", str(tmp_path / "one")], env, tmp_path)
    _cli([*common, "--results", str(tmp_path / "two")], env, tmp_path, torchrun=2)
    for name in DATASETS:
        got = {}
        for run in ("one", "two"):
            folder = tmp_path / run / "wide_threads" / "elevater"
            res = json.loads((folder / f"{name}.json").read_text())
            got[run] = (res, np.load(folder / res["files"]["probs"]))
        np.testing.assert_array_equal(got["two"][1], got["one"][1], err_msg=name)
        assert got["two"][0]["run_key"]["hash"] == got["one"][0]["run_key"]["hash"]
        assert got["two"][0]["provenance"]["world_size"] == 2 and got["one"][0]["provenance"]["world_size"] == 1
