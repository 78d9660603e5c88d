"""Fixtures shared by tests/ and benchmarks/: never touch the user's cache, never reach a hub."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """A throwaway classifier cache for the session, offline hubs, no user weights folder."""
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
