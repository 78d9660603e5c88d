"""The one exception type for errors a user can cause (paths, cards, data, weights, flags)."""
from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """A problem with the user's input: its message says what was expected, what was found and what to do."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (for "did you mean" hints), or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    best = closest(name, candidates)
    return f" Did you mean '{best}'?" if best else ""
