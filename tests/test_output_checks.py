"""A value that is not a score never becomes one, and the failure names where the bad value came from: the image
tower, the feature cache, or the classifier (text tower). A one-dataset failure exits cleanly with code 2."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from harness.engine.imagepass import NonFiniteOutputError
from harness.engine.imagesource import DECODED, FEATURE_CACHE, PIXEL_CACHE
from harness.engine.zeroshot import _predictions

from conftest import REPO


def _unit_rows(n: int = 6, d: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _classifier(d: int = 8, c: int = 3) -> torch.Tensor:
    w = torch.randn(d, c, generator=torch.Generator().manual_seed(1))
    return w / w.norm(dim=0, keepdim=True)


def test_good_features_score():
    preds = _predictions(_unit_rows(), {}, _classifier(), "cpu", 1.0, DECODED)
    np.testing.assert_allclose(preds.probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("value", [3e38, float("nan"), float("inf"), 0.0])
def test_a_bad_cached_feature_row_blames_the_feature_cache(value):
    features = _unit_rows()
    features[2] = value
    with pytest.raises(NonFiniteOutputError, match=r"row 2: .* in the feature cache: the entry is damaged.*"
                                                   r"--refresh-cache"):
        _predictions(features, {}, _classifier(), "cpu", 1.0, FEATURE_CACHE)


@pytest.mark.parametrize("source", [DECODED, PIXEL_CACHE])
def test_a_bad_computed_feature_row_blames_the_image_tower(source):
    features = _unit_rows()
    features[4, 0] = 3e38
    with pytest.raises(NonFiniteOutputError, match="row 4: .* from the image tower: check the weights") as caught:
        _predictions(features, {}, _classifier(), "cpu", 1.0, source)
    assert "classifier" not in str(caught.value)


def test_a_bad_row_of_an_unreadable_image_is_not_scored_and_not_blamed():
    features = _unit_rows()
    features[1] = 0.0  # what the image pass leaves for an image it could not read
    preds = _predictions(features, {1: "unreadable"}, _classifier(), "cpu", 1.0, DECODED)
    assert preds.n_images == 5 and preds.skipped == [1]


def test_a_bad_classifier_blames_the_text_tower():
    classifier = _classifier()
    classifier[0, 1] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"classifier \(text tower\)"):
        _predictions(_unit_rows(), {}, classifier, "cpu", 1.0, DECODED)


@pytest.mark.slow
def test_a_single_dataset_failure_exits_2_with_one_line_and_no_abort(demo_root, tmp_path, tiny_loaded):
    """NaN weights, one dataset, the command line in its own process: exit 2, the error names the image tower, and
    the process ends cleanly (a daemon import thread once made it abort with "terminate called ...")."""
    sd = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    sd["visual.proj"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    cards = tmp_path / "cards"
    cards.mkdir()
    base = yaml.safe_load((REPO / "harness" / "cards" / "model_cards" / "tiny_demo_clip.yaml").read_text())
    base.update(name="tiny_nan", weights={"source": "local", "path": str(tmp_path / "nan.pt")})
    (cards / "tiny_nan.yaml").write_text(yaml.safe_dump(base))
    env = dict(os.environ, HARNESS_MODEL_CARDS=str(cards), HARNESS_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "tiny_nan", "--dataset", "cifar-10",
                          "--data-root", str(demo_root), "--results", str(tmp_path / "r"), "--workers", "0",
                          "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "image tower" in errors[0] and "check the weights" in errors[0], out.stderr[-2000:]
    assert "terminate called" not in out.stderr and "Traceback" not in out.stderr
