"""Pixel cache, feature cache, rescoring, `cache ls/prune`, and data-parallel eval: every path gives the same bits.

The reference is the plain torchvision path (workers apply the whole transform, as before the caches existed), itself
checked against an independent hand pipeline in tests/test_zeroshot.py.
"""
from __future__ import annotations

import copy
import dataclasses
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
from harness.data.testsets import ImageReadError, open_eval_data
from harness.core.errors import HarnessError
from harness.engine.options import EvalOptions
from harness.engine.zeroshot import evaluate_dataset

from conftest import REPO

CIFAR, PETS, KITTI = "cifar-10", "oxford-iiit-pets", "kitti-distance"


def _run(loaded, name: str, root: Path, **kw):
    dcard = kw.pop("dcard", None) or get_dataset_card(name)
    data = open_eval_data(dcard, root)
    kw = {"pixel_cache": True, "feature_cache": True, "batch_size": 7, "workers": 0, "progress": False, **kw}
    return evaluate_dataset(loaded, dcard, data, EvalOptions(protocol="elevater", classifier_cache=False, **kw))


class _NoDecoding:
    """Makes any image read fail the test: in-process (workers=0) evaluations must not touch an image."""

    def __init__(self, monkeypatch):
        import harness.data.testsets as data

        def refuse(*args, **kwargs):
            raise AssertionError("an image was read")

        monkeypatch.setattr(data._ManifestImageLoader, "load", refuse)
        monkeypatch.setattr(data._FileListLoader, "load", refuse)


def _other_model(loaded):
    """The tiny model with other weights (and so another weights hash)."""
    other = copy.copy(loaded)
    other.model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        other.model.visual.proj.mul_(1.7)
    other.weights_identity = {**loaded.weights_identity, "sha256": "0" * 63 + "1"}
    return other


@pytest.mark.parametrize("name", [CIFAR, PETS, KITTI])  # KITTI: no center crop (a squashing resize)
def test_every_image_source_gives_identical_probabilities(tiny_loaded, demo_root, cache, name):
    plain = _run(tiny_loaded, name, demo_root, pixel_cache=False, feature_cache=False)
    cold = _run(tiny_loaded, name, demo_root)
    warm_pixels = _run(tiny_loaded, name, demo_root, feature_cache=False)
    from_features = _run(tiny_loaded, name, demo_root)
    # identical for any batch size too (the kernels may change a last bit with the batch's size, so both paths
    # use the same one)
    np.testing.assert_array_equal(_run(tiny_loaded, name, demo_root, feature_cache=False, batch_size=5).predictions.probs,
                                  _run(tiny_loaded, name, demo_root, pixel_cache=False, feature_cache=False,
                                       batch_size=5).predictions.probs)
    sources = [o.predictions.source for o in (plain, cold, warm_pixels, from_features)]
    assert sources == ["decoded", "decoded (pixel cache written)", "pixel cache", "feature cache"]
    for other in (cold, warm_pixels, from_features):
        np.testing.assert_array_equal(other.predictions.probs, plain.predictions.probs)
        assert other.metrics == plain.metrics
    entries = [m.parent for m in (cache / "pixels").glob("*/meta.json")]
    assert len(entries) == 1 and (entries[0] / "pixels.npy").is_file()
    crops = np.load(entries[0] / "pixels.npy", mmap_mode="r")
    assert crops.dtype == np.uint8 and crops.shape == (len(plain.predictions.probs), 32, 32, 3)


def test_a_second_model_of_the_same_geometry_never_decodes(tiny_loaded, demo_root, cache, monkeypatch):
    _run(tiny_loaded, PETS, demo_root)
    other = _other_model(tiny_loaded)
    reference = _run(other, PETS, demo_root, pixel_cache=False, feature_cache=False)
    _NoDecoding(monkeypatch)
    cached = _run(other, PETS, demo_root)
    assert cached.predictions.source == "pixel cache"
    np.testing.assert_array_equal(cached.predictions.probs, reference.predictions.probs)
    assert not np.array_equal(cached.predictions.probs, _run(tiny_loaded, PETS, demo_root).predictions.probs)


def test_changed_templates_are_rescored_from_features_without_reading_an_image(tiny_loaded, demo_root, cache,
                                                                                monkeypatch):
    card = get_dataset_card(CIFAR)
    _run(tiny_loaded, CIFAR, demo_root)
    edited = dataclasses.replace(card, templates=("a blurry photo of a {}.", "art of the {}."))
    expected = _run(tiny_loaded, CIFAR, demo_root, dcard=edited, pixel_cache=False, feature_cache=False)
    _NoDecoding(monkeypatch)
    rescored = _run(tiny_loaded, CIFAR, demo_root, dcard=edited, features_only=True)
    assert rescored.predictions.source == "feature cache"
    np.testing.assert_array_equal(rescored.predictions.probs, expected.predictions.probs)
    with pytest.raises(HarnessError, match="no cached image features .* run `eval`"):
        _run(_other_model(tiny_loaded), CIFAR, demo_root, features_only=True)


def test_damaged_cache_entries_are_recomputed_never_trusted(tiny_loaded, demo_root, cache, caplog):
    plain = _run(tiny_loaded, CIFAR, demo_root, pixel_cache=False, feature_cache=False)
    _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    entry = next((cache / "pixels").glob("*/meta.json")).parent
    array = entry / "pixels.npy"
    array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])  # a truncated file
    again = _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    assert again.predictions.source == "decoded (pixel cache written)" and "ignoring" in caplog.text
    np.testing.assert_array_equal(again.predictions.probs, plain.predictions.probs)
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "key": "another"}))  # an entry of other data
    assert _run(tiny_loaded, CIFAR, demo_root, feature_cache=False).predictions.source.startswith("decoded")
    # a killed build leaves only a temp file (no meta.json): it is not an entry, and it is cleaned up
    (entry / "meta.json").unlink()
    dead = entry / ".pixels.npy.999999.build.tmp"
    dead.write_bytes(b"partial")
    out = _run(tiny_loaded, CIFAR, demo_root, feature_cache=False)
    assert out.predictions.source == "decoded (pixel cache written)" and not dead.exists()
    np.testing.assert_array_equal(out.predictions.probs, plain.predictions.probs)


def test_unreadable_images_are_recorded_in_the_cache_and_handled_the_same_warm(tiny_loaded, demo_root, cache,
                                                                              tmp_path):
    from test_faults import FAULTS, _rewrite_zip, _suite_copy

    zip_path, _ = _suite_copy(demo_root, tmp_path / "data")
    _rewrite_zip(zip_path, FAULTS["truncated jpeg"])
    cold = _run(tiny_loaded, CIFAR, tmp_path / "data", skip_bad_images=True, feature_cache=False)
    warm = _run(tiny_loaded, CIFAR, tmp_path / "data", skip_bad_images=True, feature_cache=False)
    assert warm.predictions.source == "pixel cache"
    assert cold.predictions.skipped == warm.predictions.skipped == [1]
    np.testing.assert_array_equal(cold.predictions.probs, warm.predictions.probs)
    with pytest.raises(ImageReadError, match="val.zip"):
        _run(tiny_loaded, CIFAR, tmp_path / "data", feature_cache=False)


def test_another_geometry_is_another_entry(tiny_loaded, demo_root, cache):
    from harness.store.pixels import pixel_entry, plan_pixels
    from harness.engine.protocols import elevater_transform

    data = open_eval_data(get_dataset_card(CIFAR), demo_root)
    card = tiny_loaded.card
    bigger = dataclasses.replace(card, preprocess=dataclasses.replace(card.preprocess, image_size=48))
    keys = {pixel_entry(data, plan_pixels(elevater_transform(c, crop)[0])).key
            for c in (card, bigger) for crop in (True, False)}
    assert len(keys) == 4
    # OpenCLIP's own transform of the same geometry shares the ELEVATER entry (its RGB step is an identity here)
    same = plan_pixels(tiny_loaded.preprocess_val)
    assert pixel_entry(data, same).key == pixel_entry(data, plan_pixels(elevater_transform(card, True)[0])).key


def test_cache_ls_and_prune(tiny_loaded, demo_root, cache, capsys):
    from harness.cli import main

    _run(tiny_loaded, CIFAR, demo_root)
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert "pixels" in out and "features" in out and CIFAR in out and "tiny_demo_clip" in out
    assert main(["cache", "prune", "--older-than", "1"]) == 0  # nothing is a day old
    assert "0 entries" in capsys.readouterr().out and list((cache / "pixels").glob("*/meta.json"))
    old = 1_000_000_000
    for meta in (cache / "features").glob("*/meta.json"):
        os.utime(meta, (old, old))
    assert main(["cache", "prune", "--older-than", "1", "--dry-run"]) == 0
    assert "would remove features" in capsys.readouterr().out and list((cache / "features").glob("*/meta.json"))
    assert main(["cache", "prune", "--older-than", "1"]) == 0
    assert not list((cache / "features").glob("*/meta.json")) and list((cache / "pixels").glob("*/meta.json"))
    assert main(["cache", "prune", "--kind", "pixels"]) == 0
    assert not list((cache / "pixels").glob("*/meta.json"))


def _cli(args: list[str], env: dict, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                 "--standalone"] if torchrun else [sys.executable])
    out = subprocess.run([*launcher, "-m", "harness", *args], cwd=env["PWD_FOR_TEST"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_what_one_process_writes(demo_root, tmp_path):
    datasets = f"{CIFAR},{PETS},voc-2007-classification"
    common = ["eval-all", "--model", "tiny_demo_clip", "--datasets", datasets, "--data-root", str(demo_root),
              "--device", "cpu", "--workers", "0", "--batch-size", "7", "--no-progress"]
    # no OMP_NUM_THREADS: the single process runs as a user starts it, torchrun sets 1 in its ranks; the harness fixes
    # the CPU thread count itself, so both compute the same bits (tests/test_determinism.py: a thread-sensitive model)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(REPO), PWD_FOR_TEST=str(tmp_path))
    one = _cli([*common, "--results", str(tmp_path / "one"), "--no-pixel-cache", "--no-feature-cache"],
               {**env, "HARNESS_CACHE": str(tmp_path / "cache1")})
    assert "3 evaluated" in one.stdout
    two_env = {**env, "HARNESS_CACHE": str(tmp_path / "cache2")}
    cold = _cli([*common, "--results", str(tmp_path / "two_cold")], two_env, torchrun=2)
    warm = _cli([*common, "--results", str(tmp_path / "two_warm"), "--no-feature-cache"], two_env, torchrun=2)
    assert "3 evaluated" in cold.stdout and "3 evaluated" in warm.stdout
    assert cold.stdout.count("3 evaluated") == 1, "only rank 0 reports"
    assert "image features from pixel cache" in warm.stderr
    for dataset in datasets.split(","):
        results = {}
        for run in ("one", "two_cold", "two_warm"):
            folder = tmp_path / run / "tiny_demo_clip" / "elevater"
            res = json.loads((folder / f"{dataset}.json").read_text())
            results[run] = (res, np.load(folder / res["files"]["probs"]))
        ref_res, ref = results["one"]
        for run in ("two_cold", "two_warm"):
            res, probs = results[run]
            np.testing.assert_array_equal(probs, ref)
            assert res["score"] == ref_res["score"] and res["run_key"]["hash"] == ref_res["run_key"]["hash"]
            assert res["provenance"]["world_size"] == 2 and res["provenance"]["gathered_by_rank_0"] is True
        assert ref_res["provenance"]["world_size"] == 1 and ref_res["provenance"]["gathered_by_rank_0"] is False
    shutil.rmtree(tmp_path / "cache2", ignore_errors=True)


def test_the_predictions_json_is_written_by_default_only_for_small_sets(demo_root, tmp_path, monkeypatch):
    from harness.cli import main
    from harness.engine import options

    base = ["eval", "--model", "tiny_demo_clip", "--dataset", CIFAR, "--data-root", str(demo_root), "--workers", "0",
            "--no-progress", "--force"]
    folder = tmp_path / "r" / "tiny_demo_clip" / "elevater"

    def written() -> bool:
        res = json.loads((folder / f"{CIFAR}.json").read_text())
        return "predictions" in res["files"]

    assert main([*base, "--results", str(tmp_path / "r")]) == 0 and written()  # 30 x 10: small
    monkeypatch.setattr(options, "PREDICTIONS_JSON_AUTO_LIMIT", 299)
    assert main([*base, "--results", str(tmp_path / "r")]) == 0 and not written()
    assert main([*base, "--results", str(tmp_path / "r"), "--predictions-json"]) == 0 and written()
    monkeypatch.setattr(options, "PREDICTIONS_JSON_AUTO_LIMIT", 10**9)
    assert main([*base, "--results", str(tmp_path / "r"), "--no-predictions-json"]) == 0 and not written()


def test_sweep_plans_decodes_once_evaluates_every_model_and_reports(demo_root, tmp_path, cache, capsys):
    from harness.cli import main

    card = (REPO / "harness" / "cards" / "model_cards" / "tiny_demo_clip.yaml").read_text()
    other = tmp_path / "tiny_seed1.yaml"
    other.write_text(card.replace("name: tiny_demo_clip", "name: tiny_seed1").replace("seed: 0", "seed: 1"))
    args = ["sweep", "--models", f"tiny_demo_clip,{other}", "--datasets", f"{CIFAR},{KITTI},caltech-101",
            "--data-root", str(demo_root), "--results", str(tmp_path / "r"), "--reports", str(tmp_path / "rep"),
            "--workers", "0", "--no-progress", "--order", "given"]
    assert main([*args, "--plan-only"]) == 0
    plan = capsys.readouterr().out
    assert "2 models x 2 datasets" in plan and "0 ready, 2 to build" in plan and "caltech-101" in plan
    assert "models, in order: tiny_demo_clip, tiny_seed1" in plan
    assert not (cache / "pixels").exists(), "--plan-only runs nothing"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("2 evaluated") == 2 and (tmp_path / "rep" / "sweep" / "index.html").is_file()
    for model in ("tiny_demo_clip", "tiny_seed1"):
        for dataset in (CIFAR, KITTI):
            res = json.loads((tmp_path / "r" / model / "elevater" / f"{dataset}.json").read_text())
            assert res["provenance"]["image_source"] == "pixel cache", "the sweep decodes before any model runs"
    assert len(list((cache / "pixels").glob("*/meta.json"))) == 2
    assert main(args) == 0 and capsys.readouterr().out.count("2 already done") == 2  # resumable


def test_changed_parts_names_only_what_changed_after_a_json_round_trip(tiny_loaded, demo_root):
    from harness.store.runkey import changed_parts, make_run_key

    dcard = get_dataset_card(CIFAR)
    data = open_eval_data(dcard, demo_root)
    key = make_run_key(tiny_loaded.card, "a" * 64, dcard, data.fingerprint(), "elevater", "fp32", "cpu")
    stored = json.loads(json.dumps(key.to_json()))  # what a result file holds: the preprocess tuples are lists now
    assert changed_parts(stored, key) == []
    other = make_run_key(tiny_loaded.card, "b" * 64, dcard, data.fingerprint(), "elevater", "amp", "cpu")
    assert changed_parts(stored, other) == ["precision", "weights"]
