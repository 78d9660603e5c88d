"""Cross-check: the REACT README's comparison — ELEVATER (the toolkit's protocol with the toolkit's numerics) against
OpenCLIP (open_clip_train's zero-shot with OpenCLIP's numerics), on the same weights and data.

Both runs go through the one engine and land in the usual results folders (so reruns resume). Per dataset both
protocols can score (multiclass), the comparison reports: the ELEVATER metric (the card's) and top-1 accuracy under
both, Δ top-1 (OpenCLIP − ELEVATER), the top-1 agreement of the two predictions (%), the largest |Δ probability|,
and what differs between the two runs — numerics, preprocessing, text, precision — computed from the protocol
specs and the results, not written by hand. The REACT README reports < 0.1 point for almost all cases; a Δ above
``THRESHOLD`` is flagged.

Output: ``<results>/<model>/crosscheck.json`` (schema_version 2): {model, threshold, datasets: {name: {elevater:
{metric, score, accuracy, numerics, precision}, openclip: {accuracy, numerics, precision}, delta, flagged,
agreement, max_abs_dprob, n_images, differences: [...], imported: {label: {score, delta_vs_elevater, agreement,
max_abs_dprob}}}}, skipped_multilabel, missing, failed}. ``imported`` compares the official toolkit's predictions,
when imported for this model (``python -m harness import-predictions``), with this harness's ELEVATER run.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core import paths
from harness.core.atomic import write_json
from harness.cards import DatasetCard, ModelCard, dataset_card_names, get_dataset_card

if TYPE_CHECKING:
    from harness.engine.options import EvalOptions

logger = logging.getLogger(__name__)

THRESHOLD = 0.1  # points of top-1 accuracy
SCHEMA_VERSION = 2


def protocol_differences(model_card: ModelCard, dataset_card: DatasetCard, preprocess_val: Any, ev: dict,
                         oc: dict) -> list[str]:
    """What the two runs did differently for this model and dataset: numerics and precision from their results,
    text and preprocessing from the protocol specs."""
    from harness.engine.protocols import make_protocol

    evs = make_protocol("elevater", model_card, dataset_card, preprocess_val)
    ocs = make_protocol("openclip", model_card, dataset_card, preprocess_val)
    out: list[str] = []
    if evs.classnames != ocs.classnames:
        changed = sum(a != b for a, b in zip(evs.classnames, ocs.classnames))
        out.append(f"class names: {changed} of {len(evs.classnames)} differ ({evs.text_source} vs {ocs.text_source})")
    else:
        out.append(f"class names: identical ({len(evs.classnames)})")
    if list(evs.templates) != list(ocs.templates):
        common = len(set(evs.templates) & set(ocs.templates))
        out.append(f"templates: {len(evs.templates)} vs {len(ocs.templates)}, {common} in common")
    else:
        out.append(f"templates: identical ({len(evs.templates)})")
    pp = model_card.preprocess
    ev_interp = "bicubic"
    if pp.interpolation != ev_interp:
        out.append(f"interpolation: elevater always bicubic, openclip {pp.interpolation} (card)")
    if not dataset_card.elevater.CENTER_CROP:
        out.append(f"resize: elevater squashes to {pp.image_size}x{pp.image_size} (CENTER_CROP false), openclip "
                   f"resize mode '{pp.resize_mode}'")
    elif pp.resize_mode != "shortest":
        out.append(f"resize: elevater shorter side + center crop, openclip resize mode '{pp.resize_mode}'")
    else:
        out.append("preprocessing: identical (shorter side, bicubic, center crop, card mean/std)")
    ev_num, oc_num = ev["provenance"].get("numerics"), oc["provenance"].get("numerics")
    out.insert(0, f"numerics: identical ({ev_num})" if ev_num == oc_num else
               f"numerics: elevater = {ev_num}; openclip = {oc_num}")
    ev_prec, oc_prec = ev["provenance"]["precision"], oc["provenance"]["precision"]
    out.append(f"precision: {ev_prec} in both runs" if ev_prec == oc_prec else
               f"precision: elevater {ev_prec}, openclip {oc_prec}")
    return out


def crosscheck(model: str | ModelCard, datasets: list[str] | None, data_root: str | Path,
               options: "EvalOptions | None" = None) -> dict:
    """Run both protocols (resuming finished results) and write the comparison JSON."""
    from harness.models import build_model
    from harness.models.elevater_yaml import resolve_model_card
    from harness.engine.options import EvalOptions
    from harness.run.runner import evaluate

    options = options or EvalOptions()
    model_card = model if isinstance(model, ModelCard) else resolve_model_card(model)
    names = datasets if datasets is not None else dataset_card_names()
    cards = [get_dataset_card(n) for n in names]
    runnable = [c for c in cards if not c.multilabel]  # openclip scores top-1/top-5 only
    results_root = Path(options.results_root or paths.results_dir())
    loaded = build_model(model_card, options.weights, device=options.resolved_device(), precision=options.precision)
    summaries = {}
    for protocol in ("elevater", "openclip"):  # each with its own numerics: the toolkit's, OpenCLIP's
        opts = dataclasses.replace(options, protocol=protocol, numerics=None)
        summaries[protocol] = evaluate(model_card, runnable, data_root, opts, loaded=loaded)
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "model": model_card.name, "threshold": THRESHOLD,
                           "datasets": {}, "skipped_multilabel": [c.name for c in cards if c.multilabel],
                           "missing": sorted(summaries["elevater"].missing),
                           "failed": {**summaries["openclip"].failed, **summaries["elevater"].failed}}
    for card in runnable:
        ev = summaries["elevater"].done.get(card.name) or summaries["elevater"].skipped.get(card.name)
        oc = summaries["openclip"].done.get(card.name) or summaries["openclip"].skipped.get(card.name)
        if ev and oc:
            out["datasets"][card.name] = compare(model_card, card, loaded.preprocess_val, ev, oc, results_root)
    write_json(results_root / model_card.name / "crosscheck.json", out)
    return out


def _probs(result: dict, results_root: Path) -> Any:
    import numpy as np

    from harness.store.results import result_json

    path = result_json(results_root, result["model"]["card"], result["protocol"]["name"], result["dataset"]["card"])
    return np.load(path.parent / result["files"]["probs"])


def _rounded(values: dict) -> dict:
    return {**values, "agreement": None if values["agreement"] is None else round(values["agreement"], 4)}


def compare(model_card: ModelCard, card: DatasetCard, preprocess_val: Any, ev: dict, oc: dict,
            results_root: Path) -> dict:
    """One dataset's row: scores, Δ, agreement, max |Δp| and the differences that explain them."""
    from harness.run.predictions_import import load_imported
    from harness.engine.metrics import agreement

    a, b = 100 * ev["metrics"]["accuracy"], 100 * oc["metrics"]["accuracy"]
    pe, po = _probs(ev, results_root), _probs(oc, results_root)
    imported = {}
    for label, result, probs in load_imported(results_root, model_card.name, card.name):
        imported[label] = {"score": result["score"], "delta_vs_elevater": round(result["score"] - ev["score"], 4),
                           **_rounded(agreement(probs, pe))}
    return {
        "imported": imported,
        "elevater": {"metric": ev["metric"], "score": ev["score"], "accuracy": round(a, 4),
                     "numerics": ev["provenance"].get("numerics"), "precision": ev["provenance"]["precision"]},
        "openclip": {"accuracy": round(b, 4), "numerics": oc["provenance"].get("numerics"),
                     "precision": oc["provenance"]["precision"]},
        "delta": round(b - a, 4), "flagged": abs(b - a) > THRESHOLD, "n_images": ev["n_images"],
        **_rounded(agreement(pe, po)),
        "differences": protocol_differences(model_card, card, preprocess_val, ev, oc),
    }


def crosscheck_lines(result: dict) -> list[str]:
    lines = [f"cross-check {result['model']}: ELEVATER (toolkit protocol + numerics) vs OpenCLIP (open_clip_train "
             f"zero-shot + numerics); top-1, flagged when |delta| > {result['threshold']} point"]
    for name, row in result["datasets"].items():
        flag = "  <-- |delta| > threshold" if row["flagged"] else ""
        agree = f"{row['agreement']:6.2f}%" if row.get("agreement") is not None else "   n/a"
        dprob = f"{row['max_abs_dprob']:.2e}" if row.get("max_abs_dprob") is not None else "n/a"
        lines.append(f"  {name:34s} elevater {row['elevater']['accuracy']:7.2f}  openclip "
                     f"{row['openclip']['accuracy']:7.2f}  delta {row['delta']:+6.2f}  agree {agree}  "
                     f"max|dp| {dprob}{flag}")
        lines.append(f"  {'':34s} {row['differences'][0]}")
        for label, imp in (row.get("imported") or {}).items():
            agree = f"{imp['agreement']:.2f}%" if imp.get("agreement") is not None else "n/a"
            lines.append(f"  {'':34s} {label}: {imp['score']:.2f} (delta vs elevater {imp['delta_vs_elevater']:+.2f}, "
                         f"agreement {agree})")
    if result.get("skipped_multilabel"):
        lines.append("  not comparable (multilabel, openclip scores top-1 only): "
                     + ", ".join(result["skipped_multilabel"]))
    if result.get("missing"):
        lines.append(f"  missing from the data root: {', '.join(result['missing'])}")
    for name, why in (result.get("failed") or {}).items():
        lines.append(f"  FAILED {name}: {why}")
    return lines
