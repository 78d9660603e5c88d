"""End to end: eval-all on the generated suite, the result files, resume after a killed run, skips and staleness."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.engine import metrics
from harness.cards import dataset_card_names, get_dataset_card
from harness.run.runner import EvalOptions, evaluate
from harness.data.synthetic import DEMO_DATASETS

from conftest import REPO


@pytest.fixture(scope="module")
def demo_run(demo_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    summary = evaluate("tiny_demo_clip", None, demo_root, EvalOptions(results_root=results, progress=False,
                                                                       workers=2, batch_size=16))
    return summary, results


def test_eval_all_runs_present_datasets_and_lists_missing(demo_run):
    summary, _ = demo_run
    assert sorted(summary.done) == sorted(DEMO_DATASETS)
    assert sorted(summary.missing) == sorted(set(dataset_card_names()) - set(DEMO_DATASETS))  # every other card
    assert "caltech-101" in summary.missing
    assert not summary.failed
    text = "\n".join(summary.lines())
    assert "missing from the data root: caltech-101" in text
    metrics_seen = {r["metric"] for r in summary.done.values()}
    assert metrics_seen == {"accuracy", "mean-per-class", "11point_mAP", "roc_auc"}


@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_result_files_are_complete_and_consistent(demo_run, demo_root, dataset):
    from harness.data.testsets import open_eval_data

    _, results = demo_run
    folder = results / "tiny_demo_clip" / "elevater"
    res = json.loads((folder / f"{dataset}.json").read_text())
    card = get_dataset_card(dataset)
    assert res["schema_version"] == 2 and res["run_key"]["parts"]["data"]["n_images"] == res["n_images"]
    assert res["dataset"]["content_hash"] == card.text_hash and res["dataset"]["card_hash"] == card.card_hash
    assert res["model"]["weights"]["sha256"] and res["model"]["weights"]["source"] == "random:seed=0"
    prov = res["provenance"]
    for key in ("packages", "git", "device", "precision", "batch_size", "date", "images_per_second"):
        assert key in prov
    assert prov["packages"]["open_clip_torch"].startswith("3.3")
    probs = np.load(folder / res["files"]["probs"])
    labels = open_eval_data(card, demo_root).labels
    assert probs.shape == (res["n_images"], card.num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    recomputed = metrics.compute(list(res["metrics"]), probs, labels)
    assert recomputed == pytest.approx(res["metrics"], abs=1e-12)
    assert res["score"] == pytest.approx(100 * res["metrics"][card.metric], abs=1e-3)
    pred = json.loads((folder / res["files"]["predictions"]).read_text())
    assert pred["model_name"] == "CLIP-tiny_demo_clip" and pred["dataset_name"] == card.elevater.DATASET
    assert pred["n_shot"] == 0 and pred["rnd_seeds"] == [0]
    assert np.asarray(pred["predictions"]).shape == (1, res["n_images"], card.num_classes)
    np.testing.assert_allclose(np.asarray(pred["predictions"][0]), probs, atol=5e-7)


def test_rerun_skips_finished_results(demo_run, demo_root):
    _, results = demo_run
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    summary = evaluate("tiny_demo_clip", None, demo_root, EvalOptions(results_root=results, progress=False))
    assert sorted(summary.skipped) == sorted(DEMO_DATASETS) and not summary.done
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before


def test_a_result_missing_a_listed_file_is_recomputed(demo_root, tmp_path):
    opts = EvalOptions(results_root=tmp_path, progress=False, workers=0)
    evaluate("tiny_demo_clip", ["cifar-10", "kitti-distance"], demo_root, opts)
    folder = tmp_path / "tiny_demo_clip" / "elevater"
    listed = json.loads((folder / "cifar-10.json").read_text())["files"]["probs"]
    (folder / listed).unlink()
    summary = evaluate("tiny_demo_clip", ["cifar-10", "kitti-distance"], demo_root, opts)
    assert list(summary.done) == ["cifar-10"] and list(summary.skipped) == ["kitti-distance"]


def test_changed_dataset_card_makes_the_result_stale(demo_root, tmp_path):
    from harness.cards import card_to_dict, parse_dataset_card

    opts = EvalOptions(results_root=tmp_path, progress=False, workers=0)
    card = get_dataset_card("kitti-distance")
    first = evaluate("tiny_demo_clip", [card], demo_root, opts)
    data = card_to_dict(card)
    data["templates"] = ["a photo of {}."]
    changed = parse_dataset_card(data, "edited card")
    second = evaluate("tiny_demo_clip", [changed], demo_root, opts)
    assert list(second.done) == ["kitti-distance"]
    assert second.done["kitti-distance"]["dataset"]["content_hash"] != \
        first.done["kitti-distance"]["dataset"]["content_hash"]


@pytest.mark.slow
def test_resume_after_killed_run_recomputes_only_unfinished(demo_root, tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cold_cache"))  # cold: ImageNet's classifier takes a while
    cmd = [sys.executable, "-m", "harness", "eval-all", "--model", "tiny_demo_clip", "--data-root", str(demo_root),
           "--results", str(results), "--workers", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = results / "tiny_demo_clip" / "elevater"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (folder / "hateful-memes.json").exists():
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    finished = sorted(p.name[:-5] for p in folder.glob("*.json") if not p.name.endswith(".predictions.json"))
    assert "hateful-memes" in finished and "imagenet-1k" not in finished, finished
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()
              if not p.name.startswith(".") and p.suffix != ".lock"}  # a lock file notes its holder
    os.environ["HARNESS_CACHE"], old = str(tmp_path / "cold_cache"), os.environ["HARNESS_CACHE"]
    try:
        summary = evaluate("tiny_demo_clip", None, demo_root, EvalOptions(results_root=results, progress=False))
    finally:
        os.environ["HARNESS_CACHE"] = old
    assert sorted(summary.skipped) == finished
    assert sorted(summary.done) == sorted(set(DEMO_DATASETS) - set(finished))
    for p, m in mtimes.items():  # finished files untouched
        assert p.stat().st_mtime_ns == m
    assert not list(folder.glob(".*.tmp"))  # leftovers of the killed write are cleaned


@pytest.mark.slow
def test_cli_eval_single_missing_dataset_exits_2_with_expected_files(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "tiny_demo_clip", "--dataset",
                          "mnist", "--data-root", str(tmp_path), "--results", str(tmp_path / "r")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "classification/mnist_20211008" in out.stderr and "test.txt" in out.stderr


@pytest.mark.slow
def test_cli_bad_card_name_exits_2_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "react_vitb32_clip", "--dataset",
                          "mnist", "--data-root", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "Did you mean 'react_vitb32_CLIP'" in out.stderr and "Traceback" not in out.stderr


def test_openclip_protocol_lists_multilabel_sets_as_not_scored(demo_root, tmp_path):
    summary = evaluate("tiny_demo_clip", ["cifar-10", "voc-2007-classification"], demo_root,
                       EvalOptions(results_root=tmp_path, progress=False, workers=0, protocol="openclip"))
    assert list(summary.done) == ["cifar-10"] and list(summary.not_applicable) == ["voc-2007-classification"]
    assert not summary.failed
    assert "not scored under the openclip protocol: voc-2007-classification" in "\n".join(summary.lines())
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match="cannot score the multilabel dataset"):
        evaluate("tiny_demo_clip", ["voc-2007-classification"], demo_root,
                 EvalOptions(results_root=tmp_path, progress=False, workers=0, protocol="openclip"))
