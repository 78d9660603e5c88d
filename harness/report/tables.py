"""The report's tables, computed from the tidy results frame of :mod:`harness.report.collect` with pandas pivots.

Each table is a :class:`Table` (title, header, rows of strings, note) that the markdown and HTML renderers of
:mod:`harness.report.render` both consume:

- :func:`per_model_tables`: models x datasets per run set; the average column is over one suite's members only;
- :func:`per_method_tables`: one family (baseline + tuned cards) per run set, with gains over the baseline;
- :func:`react_comparison_tables`: the REACT README's form (rows = methods, columns = published + run sets);
- :func:`measured_vs_published_table`, :func:`crosscheck_table`, :func:`training_table`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from harness.core import training_log
from harness.core.errors import HarnessError
from harness.data.sources import HAND_DOWNLOAD_NOTE
from harness.cards import IMAGENET, DatasetCard, ModelCard, Suite
from harness.engine.metrics import METRIC_LABELS
from harness.report.collect import DIFFERENT_SPLIT, PAPER_LABEL, Family, TrainingRun, families, published_frame, \
    with_published

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MISSING = "—"
OTHER_SPLIT_MARK = "†"  # a score read from a source whose test split is not ELEVATER's (harness.data.sources)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(value: float | None, signed: bool = False) -> str:
    """A score as text: two decimals (signed for gains), :data:`MISSING` for None or NaN."""
    if value is None or value != value:  # None or NaN
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def score_grid(df: "pd.DataFrame", index: str, columns: str) -> "pd.DataFrame":
    """``score`` pivoted to index x columns (a repeated cell keeps the last row's score)."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(dtype=float)
    return df.pivot_table(index=index, columns=columns, values="score", aggfunc="last")


def _run_sets(df: "pd.DataFrame", protocol: str) -> Iterator[tuple[str, "pd.DataFrame"]]:
    sub = df[df.protocol == protocol]
    for run_set in sorted(sub.run_set.unique()):
        yield run_set, sub[sub.run_set == run_set]


# ----------------------------------------------------------------------------------------------------------------------
# per model

def _different_split(value: object) -> bool:
    return value == DIFFERENT_SPLIT


def other_split_rows(df: "pd.DataFrame") -> "pd.Series":
    """Which rows were read from a ``different split`` source (a boolean mask; False where no source is recorded)."""
    import pandas as pd

    if "source_fidelity" not in df:
        return pd.Series(False, index=df.index)
    return df.source_fidelity.map(_different_split).astype(bool)


def same_split_only(df: "pd.DataFrame") -> "pd.DataFrame":
    """``df`` without the rows read from a different split (plots compare with ELEVATER/published numbers)."""
    return df[~other_split_rows(df)]


def other_split_note(other: "pd.DataFrame", display: dict[str, str], order: list[str]) -> str:
    """The footnote of :data:`OTHER_SPLIT_MARK` naming each marked dataset's source (``other``: its rows)."""
    which = sorted(set(other.dataset), key=lambda d: order.index(d) if d in order else len(order))
    srcs = [f"{display.get(d, d)}: {source_label(other[other.dataset == d].iloc[-1])}" for d in which]
    return (f"{OTHER_SPLIT_MARK} = different split: read from a source whose test split is not ELEVATER's "
            f"({'; '.join(srcs)}), so the number is not comparable to published ELEVATER numbers")


def per_model_tables(df: "pd.DataFrame", datasets: list[DatasetCard], suite: Suite, protocol: str,
                     allow_other_splits: bool = False) -> list[Table]:
    """One table per run set: a row per model, a column per dataset card (in the given order) and the suite's
    average over the members that were evaluated (datasets outside the suite have a column but are not averaged).
    A score read from a ``different split`` source (``source_fidelity``) is marked :data:`OTHER_SPLIT_MARK` and left
    out of the average unless ``allow_other_splits`` (then the average's header says so and the average is marked)."""
    names = [d.name for d in datasets]
    members = [n for n in names if n in suite.members] + [m for m in suite.members if m not in names]
    n_members = len(suite.members)
    if protocol == "elevater":
        metrics = ", ".join(f"{d.display_name}: {METRIC_LABELS[d.metric]}" for d in datasets if d.metric != "accuracy")
        what = f"each dataset with its own ELEVATER metric (top-1 accuracy unless noted: {metrics})"
    else:
        what = "top-1 accuracy on every dataset (multilabel sets are not scored under this protocol)"
    note = (f"Scores in percent; {what}. {MISSING} = not evaluated. {suite.title} is the mean over the evaluated "
            f"datasets of the {suite.name} suite only; (n/{n_members}) says how many went in.")
    display = {d.name: d.display_name for d in datasets}
    tables = []
    for run_set, part in _run_sets(df, protocol):
        grid = score_grid(part, "model", "dataset")
        other = part[other_split_rows(part)]
        marked = set(zip(other.model, other.dataset))
        rows = []
        included_other = False
        for model in grid.index:
            scores = grid.loc[model]
            present, with_other = [], False
            for m in members:
                if m not in scores.index or scores[m] != scores[m]:
                    continue
                if (model, m) in marked:
                    if not allow_other_splits:
                        continue
                    with_other = True
                present.append(float(scores[m]))
            included_other |= with_other
            avg = f"{sum(present) / len(present):.2f}" if present else MISSING
            mark = f" {OTHER_SPLIT_MARK}" if with_other else ""
            cells = [fmt(scores.get(n)) + (f" {OTHER_SPLIT_MARK}" if (model, n) in marked else "") for n in names]
            rows.append([model] + cells + [f"{avg}{mark} ({len(present)}/{n_members})"])
        title = f"{suite.title}, other splits included" if included_other else suite.title
        header = ["model"] + [d.display_name for d in datasets] + [f"{title} (n/{n_members})"]
        table_note = note
        if marked:
            table_note += (f" {other_split_note(other, display, names)}; "
                           + ("included in the average as asked (--allow-other-splits)." if allow_other_splits else
                              f"left out of {suite.title} (--allow-other-splits includes it)."))
        tables.append(Table(f"Results per model — {run_set}, {protocol} protocol", header, rows, note=table_note))
    return tables


def source_label(row: object) -> str:
    """A result row's data source in words: kind, repo@revision (short), split."""
    kind = getattr(row, "source_kind", None) or "elevater"
    repo = getattr(row, "source_repo", None)
    rev = getattr(row, "source_revision", None)
    split = getattr(row, "source_split", None)
    if kind == "elevater" or not isinstance(repo, str):
        return f"{kind} (the toolkit's layout)" if kind == "elevater" else kind
    at = f"@{rev[:8]}" if isinstance(rev, str) and rev else "@(revision unknown)"
    return f"{kind} {repo}{at}" + (f", split {split}" if isinstance(split, str) and split else "")


def data_sources_table(df: "pd.DataFrame", datasets: list[DatasetCard]) -> Table:
    """Per run set and dataset, where the test images came from: kind, repo@revision, split, fidelity, and how many
    results read them."""
    order = {d.name: i for i, d in enumerate(datasets)}
    display = {d.name: d.display_name for d in datasets}
    rows = []
    if not df.empty:
        cols = ["run_set", "dataset", "source_kind", "source_repo", "source_revision", "source_split",
                "source_fidelity"]
        keyed = df[cols].astype(object).where(df[cols].notna(), None)
        groups: dict[tuple, int] = {}
        for key in keyed.itertuples(index=False, name=None):
            groups[key] = groups.get(key, 0) + 1
        for (run_set, dataset, kind, repo, rev, split, fidelity), count in sorted(
                groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), str(kv[0][2:]))):
            fid = fidelity or "same split"
            where = (f"{repo}@{rev[:8]}" if repo and rev else
                     f"{repo} ({HAND_DOWNLOAD_NOTE})" if repo else "the toolkit's container layout")
            rows.append([run_set, display.get(dataset, dataset), kind or "elevater", where,
                         split or MISSING, fid + (f" {OTHER_SPLIT_MARK}" if _different_split(fid) else ""),
                         _caveat(dataset, kind, repo) or MISSING, str(count)])
    return Table("Data sources", ["run set", "dataset", "source", "repo@revision", "split", "fidelity", "caveat",
                                  "results"],
                 rows, note=f"Where each dataset's test images were read from (results without a recorded source "
                            f"read the toolkit's own layout). {OTHER_SPLIT_MARK} = not ELEVATER's test split; "
                            f"'same images in another order' = ELEVATER's test images, read in another order; "
                            f"'{HAND_DOWNLOAD_NOTE}' = a copy not downloaded by prepare, its commit not known; caveat "
                            f"= a known label difference of the source (harness/data/sources.yaml).")


def _caveat(dataset: str, kind: str | None, repo: str | None) -> str:
    """The sources data's caveat for (dataset, source kind, repo), '' when none (or the dataset is unknown)."""
    from harness.data.sources import load_sources

    try:
        found = load_sources().sources.get(dataset, [])
    except HarnessError:
        return ""
    return next((s.caveat for s in found if s.kind == kind and s.repo == repo), "")


# ----------------------------------------------------------------------------------------------------------------------
# per method (families)

def family_grids(df: "pd.DataFrame", cards: dict[str, ModelCard], datasets: list[DatasetCard],
                 protocol: str) -> Iterator[tuple[str, Family, "pd.DataFrame"]]:
    """(run set, family, scores) for every family of :func:`~harness.report.collect.families` whose baseline and at
    least one tuned card have results in the run set; scores: rows = the baseline then the tuned cards with results
    (family order), columns = the datasets (in the given order) that any of them was evaluated on."""
    order = [d.name for d in datasets]
    fams = families(cards)
    for run_set, part in _run_sets(df, protocol):
        for fam in fams:
            grid = score_grid(part[part.model.isin(fam.members)], "model", "dataset")
            tuned = [m for m in fam.tuned if m in grid.index]
            if fam.base not in grid.index or not tuned:
                continue
            yield run_set, fam, grid.reindex(index=[fam.base, *tuned], columns=[d for d in order if d in grid.columns])


def per_method_tables(df: "pd.DataFrame", datasets: list[DatasetCard], cards: dict[str, ModelCard],
                      protocol: str) -> list[Table]:
    tables = []
    short = {d.name: d.display_name for d in datasets}
    order = [d.name for d in datasets]
    for run_set, fam, grid in family_grids(df, cards, datasets, protocol):
        part = df[(df.protocol == protocol) & (df.run_set == run_set) & df.model.isin(fam.members)]
        other = part[other_split_rows(part)]
        marked = set(zip(other.model, other.dataset))

        def mark(m: str, d: str) -> str:
            return f" {OTHER_SPLIT_MARK}" if (m, d) in marked else ""

        gains = grid.sub(grid.loc[fam.base], axis=1)
        base = grid.loc[fam.base]
        rows = [["Baseline", fam.base] + [fmt(v) + mark(fam.base, d) for d, v in base.items()]]
        for m in grid.index[1:]:
            cells = []
            for d in grid.columns:
                v, b = grid.at[m, d], base[d]
                cells.append((fmt(v) if v != v or b != b else f"{v:.2f} ({gains.at[m, d]:+.2f})")
                             + (mark(m, d) or mark(fam.base, d)))
            rows.append([cards[m].method.capitalize(), m] + cells)
        note = "Gains over the baseline in parentheses (points)."
        if marked:
            note += f" {other_split_note(other, short, order)}; a gain involving one is marked too."
        tables.append(Table(f"Per method — base {fam.base}, {run_set}, {protocol} protocol",
                            ["method", "model"] + [short[d] for d in grid.columns], rows, note=note))
    return tables


def react_comparison_tables(df: "pd.DataFrame", cards: dict[str, ModelCard], run_labels: list[str], protocol: str,
                            dataset: str = IMAGENET, paper_label: str = PAPER_LABEL) -> list[Table]:
    """The REACT README's table form, one per family with a result on ``dataset``: rows Baseline / Locked-text /
    Gated-image..., columns the cards' published number then one per run set."""
    grid = score_grid(df[(df.protocol == protocol) & (df.dataset == dataset)], "model", "run_set")
    pub = published_frame(cards)
    published = pub[pub.dataset == dataset].set_index("model").published
    tables = []
    for fam in families(cards):
        block = grid.reindex(index=list(fam.members), columns=run_labels)
        if block.isna().all(axis=None):
            continue
        counts = Counter(cards[m].method for m in fam.members)
        rows = []
        for m in fam.members:
            card = cards[m]
            label = card.method.capitalize()
            if counts[card.method] > 1 and card.retrieval_set:
                label += f" ({card.retrieval_set})"
            rows.append([label, fmt(published.get(m))] + [fmt(v) for v in block.loc[m].tolist()])
        tables.append(Table(f"REACT comparison — {fam.base} family, {dataset} zero-shot",
                            ["", paper_label] + run_labels, rows,
                            note=f"'{paper_label}': the number on each model card (published_source); the other "
                                 f"columns are runs of this harness ({protocol} protocol), labelled by run set. "
                                 f"Rows: " + ", ".join(f"{cards[m].method} = {m}" for m in fam.members) + "."))
    return tables


# ----------------------------------------------------------------------------------------------------------------------
# published numbers, cross-checks, training

def measured_vs_published_table(df: "pd.DataFrame", cards: dict[str, ModelCard], protocol: str) -> Table:
    both = with_published(df[df.protocol == protocol], cards).sort_values(["model", "dataset", "run_set"],
                                                                          kind="stable")
    other = other_split_rows(both)
    rows = [[r.model, r.dataset, r.run_set, f"{r.published:.2f}"]
            + ([f"{r.score:.2f} {OTHER_SPLIT_MARK}", f"{r.score - r.published:+.2f} {OTHER_SPLIT_MARK}"] if o else
               [f"{r.score:.2f}", f"{r.score - r.published:+.2f}"])
            for r, o in zip(both.itertuples(), other)]
    note = ("Every card with a published number and a finished result." if rows else
            "No finished result for a card that carries a published number.")
    if other.any():
        note += f" {other_split_note(both[other], {}, [])}: its Δ says nothing about the reproduction."
    return Table(f"Measured vs published ({protocol} protocol)",
                 ["model", "dataset", "run set", "published", "measured", "Δ"], rows, note=note)


def crosscheck_table(label: str, cc: dict) -> Table:
    """The REACT README's comparison: ELEVATER (toolkit protocol + numerics) vs OpenCLIP (its zero-shot + numerics)."""
    rows = []
    for name, r in sorted(cc["datasets"].items()):
        ev, oc = r["elevater"], r["openclip"]
        metric = f"{ev['score']:.2f} ({METRIC_LABELS.get(ev['metric'], ev['metric'])})"
        agreement = fmt(r.get("agreement"))
        dprob = f"{r['max_abs_dprob']:.1e}" if r.get("max_abs_dprob") is not None else MISSING
        rows.append([name, metric, f"{ev['accuracy']:.2f}", f"{oc['accuracy']:.2f}", f"{r['delta']:+.2f}",
                     agreement, dprob, "⚠ |Δ| > %.1f" % cc["threshold"] if r["flagged"] else "ok",
                     "; ".join(r["differences"])])
    note = (f"The same weights and data: ELEVATER = the toolkit's protocol with the toolkit's numerics, OpenCLIP = "
            f"open_clip_train's zero-shot with OpenCLIP's numerics. Δ is top-1 accuracy (OpenCLIP − ELEVATER), "
            f"flagged when |Δ| > {cc['threshold']} point (the REACT README reports < 0.1 for almost all cases); "
            f"agreement = images whose top-1 prediction is the same under both.")
    if cc.get("skipped_multilabel"):
        note += " Not comparable (multilabel): " + ", ".join(cc["skipped_multilabel"]) + "."
    return Table(f"Cross-check OpenCLIP vs ELEVATER — {cc['model']} ({label})",
                 ["dataset", "ELEVATER metric", "ELEVATER top-1", "OpenCLIP top-1", "Δ top-1", "agreement %",
                  "max |Δp|", "flag", "what differs"], rows, note=note)


def unusable_files_table(problems: list[tuple[str, str]]) -> Table:
    """Result files the report could not use, with why (malformed, older or newer schema, missing data files)."""
    return Table("Result files not used", ["run set", "why"], [[label, why] for label, why in problems],
                 note="These files are left out of every table above. A newer schema_version needs a newer harness; "
                      "an older one is replaced by the next eval of that model and dataset.")


def training_table(runs: list[TrainingRun]) -> Table:
    """One row per training run: epochs, first and last epoch's mean loss, the last eval with a top-1 accuracy."""
    rows = []
    for name, log in runs:
        epochs = [r[training_log.TRAIN_LOSS_MEAN] for r in log if training_log.is_epoch_row(r)]
        evals = [r for r in log if training_log.is_eval_row(r) and training_log.eval_top1(r) is not None]
        last = evals[-1] if evals else {}
        top1 = training_log.eval_top1(last)
        rows.append([name, str(len(epochs)), fmt(epochs[0]) if epochs else MISSING,
                     fmt(epochs[-1]) if epochs else MISSING, last.get(training_log.EVAL_DATASET, MISSING),
                     fmt(100 * top1) if top1 is not None else MISSING])
    return Table("Training runs", ["run", "epochs", "loss (first epoch)", "loss (last epoch)", "eval dataset",
                                   "zero-shot top-1 (last eval)"], rows)
