"""Shared fixtures: an isolated cache/results per test session, the generated demo suite, tiny cards."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO / "reference"  # copied from the project's shared/reference (see reference/PROVENANCE.md)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The offline demo suite (6 real cards' layouts) generated once per session."""
    from harness.data.synthetic import make_demo_suite

    root = tmp_path_factory.mktemp("demo_data")
    make_demo_suite(root, images_per_class=3)
    return root


@pytest.fixture(scope="session")
def tiny_loaded():
    """The tiny demo model card, built once."""
    from harness.cards import get_model_card
    from harness.models import build_model

    return build_model(get_model_card("tiny_demo_clip"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test's own (HARNESS_CACHE)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(folder))
    return folder
