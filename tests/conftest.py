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


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """A running LoopbackHub (tests/loopback_hub.py) serving ``tmp_path/hub``, with huggingface_hub pointed at it:
    HF_ENDPOINT set (env and huggingface_hub's import-time constants), a fresh HF_HOME, HF_HUB_OFFLINE and HF_TOKEN
    unset. Gate a repo with ``hub.gated.add(repo)``; its token is ``hub.token``."""
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api as hf_api

    from loopback_hub import LoopbackHub  # tests/ is on sys.path (pytest rootdir-less conftest)

    home = tmp_path / "hf_home"
    with LoopbackHub(tmp_path / "hub") as hub:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE",
                    "HUGGINGFACE_HUB_CACHE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
        yield hub
