"""Imported run sets (``python -m harness import-predictions``) against the harness's own, result by result.

:func:`runset_tables` gives one table per imported run set and harness run set: for every (model card, dataset) the
import holds, both scores, Δ (imported − harness), the top-1 agreement of the two predictions and the largest
|Δ probability|, from the two results' probability files. Multilabel sets get no agreement (n/a, see
:data:`MULTILABEL_NOTE`): their zero-shot probabilities are a softmax over the classes, so no fixed threshold turns
them into label sets, and their comparison is Δ and max |Δ probability|.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harness.cards import DatasetCard
from harness.run.predictions_import import PROTOCOL, is_imported, load_probs
from harness.engine.metrics import METRIC_LABELS, agreement
from harness.report.tables import MISSING, Table, fmt
from harness.store.results import scan_results

logger = logging.getLogger(__name__)

NOT_APPLICABLE = "n/a"
MULTILABEL_NOTE = ("Top-1 agreement is n/a on multilabel sets: zero-shot probabilities are a softmax over the "
                   "classes, so a 0.5 threshold calls almost every label absent and would agree trivially.")
NOTE = (f"Scores in percent, each dataset with its own ELEVATER metric, both under the {PROTOCOL} protocol; Δ in "
        f"points. Top-1 agreement: share of images whose most probable class is the same in both. max abs Δ prob: the "
        f"largest difference of one probability over all images and classes (predictions JSONs round to 6 decimals: "
        f"up to about 5e-7 is that rounding; it also ties values, which can move 11-point mAP and ROC AUC). "
        f"{MULTILABEL_NOTE} Pair an import with a model card by importing with --model CARD.")


@dataclass
class _Entry:
    path: str
    result: dict


Index = dict[tuple[str, str], _Entry]  # (model card, dataset card) -> a result of one run set


def index_run_sets(run_sets: list[tuple[str, Path]]) -> tuple[dict[str, Index], dict[str, Index]]:
    """(imported, harness): per run set label, its results of the protocol the toolkit runs, by (model, dataset).
    A result is imported when its provenance says where it was imported from."""
    imported: dict[str, Index] = {}
    harness: dict[str, Index] = {}
    for label, folder in run_sets:
        if not Path(folder).is_dir():
            continue
        for r in scan_results(folder)[0]:
            if r["protocol"]["name"] != PROTOCOL:
                continue
            side = imported if is_imported(r) else harness
            side.setdefault(label, {})[(r["model"]["card"], r["dataset"]["card"])] = _Entry(r["_path"], r)
    return imported, harness


def compare(imported: _Entry, harness: _Entry, multilabel: bool) -> dict:
    """Δ, top-1 agreement (%) and max |Δ probability| of two results of one model and dataset (None where they
    cannot be computed; ``note`` says why)."""
    a, b = imported.result, harness.result
    out: dict = {"delta": a["score"] - b["score"], "agreement": None, "max_abs_dprob": None, "note": ""}
    notes = []
    if (a["run_key"]["parts"].get("data") or {}) != (b["run_key"]["parts"].get("data") or {}):
        notes.append("different data (fingerprints differ)")
    try:
        pa, pb = load_probs(imported.path, a), load_probs(harness.path, b)
    except (OSError, ValueError) as exc:
        notes.append(f"probabilities unreadable ({exc})")
        out["note"] = "; ".join(notes)
        return out
    if pa.shape != pb.shape:
        notes.append(f"shapes differ: imported {pa.shape}, harness {pb.shape}")
    out.update(agreement(pa, pb, multilabel))
    out["note"] = "; ".join(notes)
    return out


def _row(model: str, dcard: DatasetCard | None, dataset: str, imp: _Entry, har: _Entry | None) -> list[str]:
    multilabel = bool(dcard and dcard.multilabel)
    metric = imp.result["metric"]
    head = [model, dcard.display_name if dcard else dataset, METRIC_LABELS.get(metric, metric),
            fmt(imp.result["score"])]
    if har is None:
        return head + [MISSING] * 4 + [str(imp.result["n_images"]), "no harness result for this model and dataset"]
    c = compare(imp, har, multilabel)
    agreement = NOT_APPLICABLE if multilabel and c["max_abs_dprob"] is not None else fmt(c["agreement"])
    dprob = MISSING if c["max_abs_dprob"] is None else f"{c['max_abs_dprob']:.2e}"
    return head + [fmt(har.result["score"]), fmt(c["delta"], signed=True), agreement, dprob,
                   str(imp.result["n_images"]), c["note"]]


def runset_tables(run_sets: list[tuple[str, Path]], datasets: list[DatasetCard]) -> list[Table]:
    """One table per (imported run set, harness run set), rows in model then report dataset order; an imported run
    set with no harness run set in the report gets one table with its scores alone."""
    imported, harness = index_run_sets(run_sets)
    cards = {d.name: d for d in datasets}
    order = {d.name: i for i, d in enumerate(datasets)}
    tables = []
    for imp_label, imp_index in sorted(imported.items()):
        keys = sorted(imp_index, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
        for har_label in sorted(harness) or [None]:
            har_index = harness.get(har_label, {}) if har_label else {}
            header = ["model", "dataset", "metric", imp_label, har_label or "harness", "Δ (imported − harness)",
                      "top-1 agreement (%)", "max abs Δ prob", "images", "note"]
            rows = [_row(m, cards.get(d), d, imp_index[(m, d)], har_index.get((m, d))) for m, d in keys]
            title = f"Imported vs harness — {imp_label} vs {har_label}" if har_label else \
                f"Imported run set — {imp_label} (no harness run set in this report)"
            tables.append(Table(title=title, header=header, rows=rows, note=NOTE))
    return tables
