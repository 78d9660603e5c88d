"""Where things live. Read this module first when something is "not found".

Shipped with the package (work after a plain ``pip install .``):
    harness/cards/model_cards/       built-in model cards (YAML)
    harness/cards/dataset_yamls/     built-in dataset cards (YAML) and ``_suites.yaml`` (which datasets form a suite)
    harness/models/configs/    OpenCLIP model configs of this project (tiny test models; react/: REACT architectures)

Searched before the built-in cards (a card found earlier shadows a built-in card of the same name):
    HARNESS_MODEL_CARDS / HARNESS_DATASET_CARDS   folders, separated by ``os.pathsep`` (":" on Linux)
    ./model_cards                                  in the current directory, when it exists (training writes
                                                   the cards of trained checkpoints there by default)

The user's own architectures (every ``*.json`` is one, named by its file stem; see docs/models.md):
    HARNESS_MODEL_CONFIGS                          folders, separated by ``os.pathsep``; a name that is already
                                                   an architecture is an error unless the config is identical

Written by runs, relative to the current directory unless an environment variable says otherwise:
    ./results  (HARNESS_RESULTS)   ./cache  (HARNESS_CACHE)   ./reports  (HARNESS_REPORTS)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # harness/
# The checkout this package was imported from, when it is one (provenance records its git hash); None when installed.
SOURCE_ROOT: Path | None = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / ".git").exists() else None

BUILTIN_MODEL_CARDS = PACKAGE_DIR / "cards" / "model_cards"
BUILTIN_DATASET_CARDS = PACKAGE_DIR / "cards" / "dataset_yamls"
MODEL_CONFIG_DIR = PACKAGE_DIR / "models" / "configs"
USER_MODEL_CARDS = "model_cards"  # relative to the current directory


def _env_path(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else Path.cwd() / default


def _env_folders(var: str) -> list[Path]:
    value = os.environ.get(var, "")
    return [Path(v).expanduser() for v in value.split(os.pathsep) if v]


def dataset_card_dirs() -> list[Path]:
    """Folders searched for dataset cards, first match wins."""
    return _env_folders("HARNESS_DATASET_CARDS") + [BUILTIN_DATASET_CARDS]


def model_card_dirs() -> list[Path]:
    """Folders searched for model cards, first match wins."""
    user = Path.cwd() / USER_MODEL_CARDS
    return _env_folders("HARNESS_MODEL_CARDS") + ([user] if user.is_dir() else []) + [BUILTIN_MODEL_CARDS]


def model_config_dirs() -> list[Path]:
    """Folders of the user's architecture configs (HARNESS_MODEL_CONFIGS), in order."""
    return _env_folders("HARNESS_MODEL_CONFIGS")


def user_model_cards_dir() -> Path:
    """Where training writes the card of a trained checkpoint by default: the first HARNESS_MODEL_CARDS folder,
    else ./model_cards."""
    folders = _env_folders("HARNESS_MODEL_CARDS")
    return folders[0] if folders else Path.cwd() / USER_MODEL_CARDS


def results_dir() -> Path:
    return _env_path("HARNESS_RESULTS", "results")


def cache_dir() -> Path:
    return _env_path("HARNESS_CACHE", "cache")


def reports_dir() -> Path:
    return _env_path("HARNESS_REPORTS", "reports")


def slug(text: str) -> str:
    """A file- and folder-name-safe form of a label, run or model name."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("_") or "unnamed"
