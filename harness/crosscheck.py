"""Cross-check: the same weights and data under the ELEVATER and the OpenCLIP protocol, side by side.

Both protocols run through the one engine (their results land in the usual results folders, so reruns resume);
the comparison is top-1 accuracy, which both report for every multiclass dataset. What differs between the two
protocols is derived from the protocol specs built from the cards — text source, class names, templates,
preprocessing, precision — not written by hand. The REACT README claims < 0.1 point for almost all cases; a
difference above ``THRESHOLD`` is flagged.

Output: ``<results>/<model>/crosscheck.json`` (schema_version 1): {model, threshold, datasets: {name: {elevater,
openclip, delta, flagged, n_images, differences: [...]}}}.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness import paths
from harness.atomic import write_json
from harness.cards import DatasetCard, ModelCard, dataset_card_names, get_dataset_card, get_model_card

logger = logging.getLogger(__name__)

THRESHOLD = 0.1  # points of top-1 accuracy
SCHEMA_VERSION = 1


def protocol_differences(model_card: ModelCard, dataset_card: DatasetCard, preprocess_val: Any,
                         precisions: tuple[str, str]) -> list[str]:
    """What the two protocols do differently for this model and dataset, computed from their specs."""
    from harness.protocols import make_protocol

    ev = make_protocol("elevater", model_card, dataset_card, preprocess_val)
    oc = make_protocol("openclip", model_card, dataset_card, preprocess_val)
    out: list[str] = []
    if ev.classnames != oc.classnames:
        changed = sum(a != b for a, b in zip(ev.classnames, oc.classnames))
        out.append(f"class names: {changed} of {len(ev.classnames)} differ ({ev.text_source} vs {oc.text_source})")
    else:
        out.append(f"class names: identical ({len(ev.classnames)})")
    if list(ev.templates) != list(oc.templates):
        common = len(set(ev.templates) & set(oc.templates))
        out.append(f"templates: {len(ev.templates)} vs {len(oc.templates)}, {common} in common")
    else:
        out.append(f"templates: identical ({len(ev.templates)})")
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
    ev_prec, oc_prec = precisions
    out.append(f"precision: {ev_prec} in both runs" if ev_prec == oc_prec else
               f"precision: elevater {ev_prec}, openclip {oc_prec}")
    return out


def crosscheck(model: str | ModelCard, datasets: list[str] | None, data_root: str | Path, options: Any = None
               ) -> dict:
    """Run both protocols (resuming finished results) and write the comparison JSON."""
    from harness.models import build_model
    from harness.runner import EvalOptions, evaluate

    options = options or EvalOptions()
    model_card = model if isinstance(model, ModelCard) else get_model_card(model)
    names = datasets if datasets is not None else dataset_card_names()
    cards = [get_dataset_card(n) for n in names]
    runnable = [c for c in cards if not c.multilabel]  # openclip scores top-1/top-5 only
    results_root = Path(options.results_root or paths.results_dir())
    loaded = build_model(model_card, options.weights, device=options.resolved_device(), precision=options.precision)
    summaries = {}
    for protocol in ("elevater", "openclip"):
        opts = EvalOptions(**{**options.__dict__, "protocol": protocol})
        summaries[protocol] = evaluate(model_card, runnable, data_root, opts, loaded=loaded)
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "model": model_card.name, "threshold": THRESHOLD,
                           "precision": options.precision, "datasets": {},
                           "skipped_multilabel": [c.name for c in cards if c.multilabel],
                           "missing": sorted(summaries["elevater"].missing)}
    for card in runnable:
        ev = summaries["elevater"].done.get(card.name) or summaries["elevater"].skipped.get(card.name)
        oc = summaries["openclip"].done.get(card.name) or summaries["openclip"].skipped.get(card.name)
        if not ev or not oc:
            continue
        a, b = 100 * ev["metrics"]["accuracy"], 100 * oc["metrics"]["accuracy"]
        out["datasets"][card.name] = {
            "metric": "accuracy", "elevater": round(a, 4), "openclip": round(b, 4), "delta": round(b - a, 4),
            "flagged": abs(b - a) > THRESHOLD, "n_images": ev["n_images"],
            "differences": protocol_differences(model_card, card, loaded.preprocess_val,
                                                (ev["provenance"]["precision"], oc["provenance"]["precision"])),
        }
    write_json(results_root / model_card.name / "crosscheck.json", out)
    return out


def crosscheck_lines(result: dict) -> list[str]:
    lines = [f"cross-check {result['model']}: openclip - elevater top-1, flagged when |delta| > "
             f"{result['threshold']} point"]
    for name, row in result["datasets"].items():
        flag = "  <-- |delta| > threshold" if row["flagged"] else ""
        lines.append(f"  {name:34s} elevater {row['elevater']:7.2f}  openclip {row['openclip']:7.2f}  "
                     f"delta {row['delta']:+6.2f}{flag}")
    if result.get("skipped_multilabel"):
        lines.append("  not comparable (multilabel, openclip scores top-1 only): "
                     + ", ".join(result["skipped_multilabel"]))
    if result.get("missing"):
        lines.append(f"  missing from the data root: {', '.join(result['missing'])}")
    return lines
