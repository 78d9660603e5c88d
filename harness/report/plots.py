"""The report's plots (matplotlib, Agg backend), each returned as ``{file name: PNG bytes}``.

- :func:`gain_plots`: per family member, its gain over the baseline on every dataset (one bar each);
- :func:`published_scatter`: measured vs published numbers of the cards;
- :func:`training_plots`: per training run, its loss over steps and its zero-shot top-1 over epochs (read with
  the names of :mod:`harness.core.training_log`).

PNGs are written without a timestamp (``Software`` metadata dropped), so the same inputs give the same bytes.
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

from harness.core import training_log
from harness.cards import DatasetCard, ModelCard
from harness.core.paths import slug
from harness.report.collect import TrainingRun, with_published
from harness.report.tables import family_grids, same_split_only

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def gain_plots(df: "pd.DataFrame", cards: dict[str, ModelCard], datasets: list[DatasetCard],
               protocol: str) -> dict[str, bytes]:
    """``gain_<run set>_<tuned card>.png``: the tuned card's score minus its baseline's, per dataset (scores read
    from a different split are left out: a plot has no footnote)."""
    plt = _pyplot()
    df = same_split_only(df)
    short = {d.name: d.display_name for d in datasets}
    out = {}
    for run_set, fam, grid in family_grids(df, cards, datasets, protocol):
        gains = grid.sub(grid.loc[fam.base], axis=1)
        for m in grid.index[1:]:
            row = gains.loc[m].dropna()
            if row.empty:
                continue
            names, values = list(row.index), row.tolist()
            fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(names) + 2), 3.4))
            ax.bar(range(len(names)), values, color=["#2e7d32" if g >= 0 else "#c62828" for g in values])
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(names)), [short[n] for n in names], rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("gain over baseline (points)")
            ax.set_title(f"{m} vs {fam.base} — {run_set}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            out[f"gain_{slug(run_set)}_{m}.png"] = _png(fig)
    return out


def published_scatter(df: "pd.DataFrame", cards: dict[str, ModelCard], protocol: str) -> dict[str, bytes]:
    """``measured_vs_published.png``: one point per result whose card has a published number for its dataset
    (results read from a different split are left out: not comparable to a published number)."""
    both = with_published(same_split_only(df[df.protocol == protocol]), cards)
    if both.empty:
        return {}
    plt = _pyplot()
    xs, ys = both.published.tolist(), both.score.tolist()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    lo, hi = min(xs + ys) - 2, max(xs + ys) + 2
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1, label="measured = published")
    ax.scatter(xs, ys, s=28, color="#1565c0")
    for x, y, m in zip(xs, ys, both.model):
        ax.annotate(m, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published (%)")
    ax.set_ylabel("measured by this harness (%)")
    ax.set_title("Measured vs published", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return {"measured_vs_published.png": _png(fig)}


def training_plots(runs: list[TrainingRun]) -> dict[str, bytes]:
    """``training_<run>.png``: loss per step (step rows) and zero-shot top-1 per epoch (eval rows)."""
    tl = training_log
    out = {}
    for name, log in runs:
        steps = [(r[tl.STEP], r[tl.LOSS]) for r in log if tl.is_step_row(r)]
        evals = [(r[tl.EPOCH], 100 * tl.eval_top1(r)) for r in log
                 if tl.is_eval_row(r) and tl.eval_top1(r) is not None]
        if not steps and not evals:
            continue
        plt = _pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
        if steps:
            a.plot([s for s, _ in steps], [v for _, v in steps], color="#6a1b9a", linewidth=1)
        a.set_xlabel("step")
        a.set_ylabel("contrastive loss")
        a.set_title("training loss", fontsize=9)
        a.grid(alpha=0.3)
        if evals:
            b.plot([e for e, _ in evals], [v for _, v in evals], marker="o", color="#ef6c00")
        b.set_xlabel("epoch")
        b.set_ylabel("zero-shot top-1 (%)")
        b.set_title("zero-shot accuracy", fontsize=9)
        b.grid(alpha=0.3)
        fig.suptitle(name, fontsize=9)
        out[f"training_{slug(name)}.png"] = _png(fig)
    return out
