"""Loading, the first stage of a report: everything the tables and plots are computed from.

- :func:`collect`: every result file of every run set as ONE tidy DataFrame, one row per
  run set x model x protocol x dataset (:data:`RESULT_COLUMNS`);
- :func:`published_frame`: the published numbers of the model cards, tidy too (model, method, base_model, dataset,
  published);
- :func:`model_cards` (built-in cards + extra folders), :func:`dataset_columns` (the dataset cards in report order)
  and :func:`families` (baseline card -> its tuned cards), the one grouping every table and plot uses;
- :func:`with_imported`: the run sets plus the imported ones found under their folders;
- :func:`load_crosschecks` (``<results>/<model>/crosscheck.json``) and :func:`load_training_runs` (read through
  :mod:`harness.core.training_log`, the schema training writes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.core import training_log
from harness.cards import IMAGENET, DatasetCard, ModelCard, Suite, all_dataset_cards, all_model_cards, \
    load_model_card, load_suites, method_rank
from harness.core.errors import HarnessError
from harness.core.safe_read import load_json
from harness.run.predictions_import import imported_run_sets
from harness.store.results import iter_results, scan_results

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PAPER_LABEL = "Paper (published)"
RESULT_COLUMNS = ["run_set", "model", "method", "base_model", "protocol", "dataset", "metric", "score", "n_images",
                  "images_per_second", "precision", "dataset_hash", "weights_sha256",
                  "source_kind", "source_repo", "source_revision", "source_split", "source_fidelity"]
# Where the test images came from (a result's ``data_source``; harness.data.sources). A result written before sources
# were recorded read the toolkit's own layout: its source is the toolkit's, ELEVATER's own split.
TOOLKIT_SOURCE = {"kind": "elevater", "repo": None, "revision": None, "split": None, "fidelity": "same split"}
DIFFERENT_SPLIT = "different split"
RESULT_ORDER = ["run_set", "model", "protocol", "dataset"]  # the sort order of the tidy frame (and of results.csv)
PUBLISHED_COLUMNS = ["model", "method", "base_model", "dataset", "published"]

TrainingRun = tuple[str, list[dict]]  # (run name, rows of its metrics.jsonl)


@dataclass
class ReportInputs:
    name: str
    run_sets: list[tuple[str, Path]]  # (label, results folder)
    logs: list[Path] = field(default_factory=list)  # training log roots (<root>/<run>/metrics.jsonl)
    model_card_dirs: list[Path] = field(default_factory=list)  # extra card folders (e.g. trained checkpoints)
    protocol: str = "elevater"
    title: str = "REACT / ELEVATER zero-shot report"
    comparison_dataset: str = IMAGENET  # the dataset of the REACT README-style comparison table
    paper_label: str = PAPER_LABEL  # header of the published-numbers column, e.g. "Paper (Dec 2021 set)"
    pairs_sets: list[tuple[str, Path]] = field(default_factory=list)  # (label, availability.json): Retrieval set
    retrieved: list[Path] = field(default_factory=list)  # `python -m retrieval query` JSONs: "Retrieved for <card>"
    allow_other_splits: bool = False  # average "different split" scores in too (the average is then labelled so)


@dataclass(frozen=True)
class Family:
    """A baseline card and the tuned cards whose ``base_model`` it is, baseline first, then by method rank."""
    base: str
    members: tuple[str, ...]

    @property
    def tuned(self) -> tuple[str, ...]:
        return self.members[1:]


# ----------------------------------------------------------------------------------------------------------------------
# cards

def model_cards(extra_dirs: Iterable[Path] = ()) -> dict[str, ModelCard]:
    """Every model card by name: the registry's folders first, then the extra folders (an earlier card wins)."""
    cards = {c.name: c for c in all_model_cards()}
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*.yaml")):
            try:
                card = load_model_card(path)
                cards.setdefault(card.name, card)
            except HarnessError as exc:
                logger.warning("skipping card %s: %s", path, exc)
    return cards


def dataset_columns(datasets: Iterable[DatasetCard] | None = None,
                    suites: Iterable[Suite] | None = None) -> list[DatasetCard]:
    """The dataset cards in report order: those in no suite first (ImageNet-1K), then suite members, by card name."""
    datasets = all_dataset_cards() if datasets is None else list(datasets)
    suites = load_suites().values() if suites is None else suites
    in_suite = {m for s in suites for m in s.members}
    return sorted(datasets, key=lambda d: (d.name in in_suite, d.name))


def families(cards: dict[str, ModelCard]) -> list[Family]:
    """Every family of the cards: a base card (which must be a card) and the non-baseline cards naming it as
    ``base_model``, ordered by :func:`harness.cards.method_rank` then name; families sorted by base name. The one
    grouping used by the per-method and comparison tables and by the gain plots."""
    tuned: dict[str, list[str]] = {}
    for card in cards.values():
        if card.method != "baseline" and card.base_model and card.base_model in cards:
            tuned.setdefault(card.base_model, []).append(card.name)
    return [Family(base, (base, *sorted(names, key=lambda m: (method_rank(cards[m].method), m))))
            for base, names in sorted(tuned.items())]


# ----------------------------------------------------------------------------------------------------------------------
# results

def collect(inputs: ReportInputs) -> "pd.DataFrame":
    """All results as one tidy DataFrame (one row per run set x model x protocol x dataset, :data:`RESULT_COLUMNS`),
    sorted by :data:`RESULT_ORDER`."""
    import pandas as pd

    rows = []
    for label, folder in inputs.run_sets:
        if not Path(folder).is_dir():
            raise HarnessError(f"Results folder {folder} (run set '{label}') does not exist.")
        for r in iter_results(folder):
            rows.append({
                "run_set": label, "model": r["model"]["card"], "method": r["model"]["method"],
                "base_model": r["model"].get("base_model"), "protocol": r["protocol"]["name"],
                "dataset": r["dataset"]["card"], "metric": r["metric"], "score": float(r["score"]),
                "n_images": int(r["n_images"]), "images_per_second": r["provenance"].get("images_per_second"),
                "precision": r["provenance"].get("precision"), "dataset_hash": r["dataset"]["content_hash"],
                "weights_sha256": (r["model"].get("weights") or {}).get("sha256"),
                **{f"source_{key}": value for key, value in data_source(r).items()},
            })
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return df.sort_values(RESULT_ORDER, kind="stable").reset_index(drop=True)


def data_source(result: dict) -> dict:
    """The result's data source (kind, repo, revision, split, fidelity); the toolkit's layout when it has none."""
    recorded = result.get("data_source")
    if not isinstance(recorded, dict) or not recorded.get("kind"):
        return dict(TOOLKIT_SOURCE)
    return {key: recorded.get(key, TOOLKIT_SOURCE[key]) for key in TOOLKIT_SOURCE}


def published_frame(cards: dict[str, ModelCard]) -> "pd.DataFrame":
    """The cards' published numbers, one row per card x dataset (:data:`PUBLISHED_COLUMNS`), in card then dataset
    order."""
    import pandas as pd

    rows = [{"model": card.name, "method": card.method, "base_model": card.base_model, "dataset": ds,
             "published": float(value)}
            for card in cards.values() for ds, value in sorted(card.published.items())]
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


def with_published(df: "pd.DataFrame", cards: dict[str, ModelCard]) -> "pd.DataFrame":
    """The rows of ``df`` whose card has a published number for their dataset, with a ``published`` column (the
    order of ``df`` is kept)."""
    pub = published_frame(cards)[["model", "dataset", "published"]]
    return df.merge(pub, on=["model", "dataset"], how="inner")


# ----------------------------------------------------------------------------------------------------------------------
# cross-checks and training logs

CROSSCHECK_KEYS = ("model", "threshold", "datasets")


CROSSCHECK_SCHEMA = 2


def _read_crosscheck(path: Path) -> dict:
    data = load_json(path, "crosscheck")  # bounded (harness.core.safe_read): a refusal is a ValueError, skipped
    if not isinstance(data, dict) or any(k not in data for k in CROSSCHECK_KEYS) or \
            not isinstance(data["datasets"], dict):
        raise ValueError(f"not a cross-check result (expected an object with {', '.join(CROSSCHECK_KEYS)})")
    if data.get("schema_version") != CROSSCHECK_SCHEMA:
        raise ValueError(f"cross-check schema_version {data.get('schema_version')!r}, this harness reads "
                         f"{CROSSCHECK_SCHEMA}: rerun `python -m harness crosscheck` for this model")
    return data


def load_crosschecks(run_sets: list[tuple[str, Path]]) -> list[tuple[str, dict]]:
    """(run set label, crosscheck.json contents) for every usable cross-check in the run sets' folders."""
    out = []
    for label, folder in run_sets:
        for path in sorted(Path(folder).glob("*/crosscheck.json")):
            try:
                out.append((label, _read_crosscheck(path)))
            except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
                logger.warning("skipping %s: %s", path, exc)
    return out


def with_imported(run_sets: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """The run sets, then every imported run set under their folders (``<folder>/imported/*/``, labelled by the
    label recorded in its results; :mod:`harness.run.predictions_import`), each folder once and each label once."""
    out = list(run_sets)
    seen = {Path(folder).resolve() for _, folder in run_sets}
    for _, folder in run_sets:
        for label, sub in imported_run_sets(Path(folder)):
            if sub.resolve() in seen:
                continue
            seen.add(sub.resolve())
            taken = {lbl for lbl, _ in out}
            out.append((label if label not in taken else f"{label} ({sub})", sub))
    return out


def unusable_files(run_sets: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    """(run set label, why) for every result or cross-check file a report leaves out: listed, never hidden."""
    out = []
    for label, folder in run_sets:
        if not Path(folder).is_dir():
            continue
        out += [(label, s.reason) for s in scan_results(folder)[1]]
        for path in sorted(Path(folder).glob("*/crosscheck.json")):
            try:
                _read_crosscheck(path)
            except (OSError, ValueError) as exc:
                out.append((label, f"{path}: {exc}"))
    return out


def load_training_runs(roots: Iterable[Path]) -> list[TrainingRun]:
    """(run name, rows) of every ``<root>/<run>/metrics.jsonl`` (:func:`harness.core.training_log.iter_runs`)."""
    return [run for root in roots for run in training_log.iter_runs(Path(root))]
