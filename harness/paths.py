"""Where the project's data folders live. Every location can be overridden by an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def dataset_cards_dir() -> Path:
    return _env_path("HARNESS_DATASET_CARDS", REPO_ROOT / "dataset_yamls")


def model_cards_dir() -> Path:
    return _env_path("HARNESS_MODEL_CARDS", REPO_ROOT / "model_cards")


def results_dir() -> Path:
    return _env_path("HARNESS_RESULTS", REPO_ROOT / "results")


def cache_dir() -> Path:
    return _env_path("HARNESS_CACHE", REPO_ROOT / "cache")
