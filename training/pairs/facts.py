"""REACT's facts about its retrieved pairs, as the pairs CLI uses them (data: :func:`harness.core.pairs_availability.
react_sets`, the package data ``harness/core/react_sets.json``)."""
from __future__ import annotations

from harness.core.pairs_availability import published_sets, react_sets

__all__ = ["default_file", "default_repo", "published_sets", "react_sets"]


def default_repo() -> str:
    return react_sets()["hf_dataset"]


def default_file() -> str:
    return react_sets()["file"]
