"""Which retrieved images each class keeps (REACT's rule): every hit of every prompt of a class is gathered per
image (an image is its URL, or its key where there is no URL, so a re-crawled copy of one URL is one image); an
image records every (query, score) that hit it and ranks by its best score; a class keeps its ``per_class`` best.
``within-class`` (REACT's) removes duplicates inside a class only; ``global`` also gives an image claimed by several
classes to the one where it scores highest (among those with room left), the others filling from their next
candidates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DEDUP_RULES = ("within-class", "global")


@dataclass
class Candidate:
    image: str  # identity: URL, or key
    row: int  # index row of its first (best) hit
    score: float = -np.inf
    query: str = ""
    hits: list[tuple[str, float]] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)

    def add(self, row: int, query: str, score: float) -> None:
        self.hits.append((query, score))
        self.rows.add(row)
        if score > self.score or (score == self.score and row < self.row):
            self.score, self.query, self.row = score, query, row


@dataclass
class Selection:
    kept: list[list[Candidate]]  # per class, best first
    candidates: list[int]  # distinct images each class's prompts found
    merged_hits: list[int]  # hits folded into an image already hit (same image, another prompt or a duplicate row)
    duplicate_rows: list[int]  # distinct corpus rows beyond one per kept image (same URL crawled twice)
    shared_images: int  # images among the candidates of two or more classes
    given_away: list[int]  # global: images a class lost to a class where they scored higher


def gather(scores: np.ndarray, rows: np.ndarray, prompts: Sequence[str], identity: Sequence[str]
           ) -> dict[str, Candidate]:
    """One class's candidates from its prompts' search results (``scores``/``rows``: (P, k), rows -1 = no hit)."""
    found: dict[str, Candidate] = {}
    for p, query in enumerate(prompts):
        for row, score in zip(rows[p], scores[p]):
            if row < 0:
                continue
            image = identity[int(row)]
            found.setdefault(image, Candidate(image=image, row=int(row))).add(int(row), query, float(score))
    return found


def _ranked(found: dict[str, Candidate]) -> list[Candidate]:
    return sorted(found.values(), key=lambda c: (-c.score, c.row))


def select(per_class_found: list[dict[str, Candidate]], per_class: int, dedup: str = "within-class") -> Selection:
    if dedup not in DEDUP_RULES:
        raise ValueError(f"dedup must be one of {DEDUP_RULES}, got {dedup!r}")
    ranked = [_ranked(found) for found in per_class_found]
    owners: dict[str, int] = {}
    for found in per_class_found:
        for image in found:
            owners[image] = owners.get(image, 0) + 1
    shared = sum(1 for n in owners.values() if n > 1)
    if dedup == "within-class":
        kept = [r[:per_class] for r in ranked]
        given_away = [0] * len(ranked)
    else:
        # greedy over every (class, image) by score: an image goes to the class where it scores highest among
        # those with room left (ties: the earlier class, then the earlier row)
        pairs = sorted(((cand.score, c, cand.row, cand) for c, r in enumerate(ranked) for cand in r),
                       key=lambda t: (-t[0], t[1], t[2]))
        taken: set[str] = set()
        kept = [[] for _ in ranked]
        for _, c, _, cand in pairs:
            if cand.image not in taken and len(kept[c]) < per_class:
                kept[c].append(cand)
                taken.add(cand.image)
        given_away = [len({c.image for c in r[:per_class]} - {c.image for c in k}) for r, k in zip(ranked, kept)]
    return Selection(kept=kept, candidates=[len(f) for f in per_class_found],
                     merged_hits=[sum(len(c.hits) for c in f.values()) - len(f) for f in per_class_found],
                     duplicate_rows=[sum(len(c.rows) - 1 for c in k) for k in kept], shared_images=shared,
                     given_away=given_away)
