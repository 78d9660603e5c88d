"""Shared fixtures: an isolated cache/results per test session, the generated demo suite, tiny cards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """Never touch the user's cache/results, never reach a hub from tests."""
    cache = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("HARNESS_CACHE", "HF_HUB_OFFLINE", "HARNESS_WEIGHTS_DIR")}
    os.environ["HARNESS_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("HARNESS_WEIGHTS_DIR", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The offline demo suite (6 real cards' layouts) generated once per session."""
    from harness.synthetic import make_demo_suite

    root = tmp_path_factory.mktemp("demo_data")
    make_demo_suite(root, images_per_class=3)
    return root


@pytest.fixture(scope="session")
def tiny_loaded():
    """The tiny demo model card, built once."""
    from harness.cards import get_model_card
    from harness.models import build_model

    return build_model(get_model_card("tiny_demo_clip"))
