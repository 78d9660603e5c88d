"""Runs evaluations: one model over one or many datasets, resumable, with a summary of what happened.

The model is built once per run, and only when some dataset still needs computing. A dataset whose result is
finished (and was made from the same model card, dataset card and weights override) is skipped; one whose data is
missing is listed and the rest still run; one that fails is reported without losing the others' results.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from harness.atomic import write_json, write_npy
from harness.cards import DatasetCard, ModelCard, get_dataset_card, get_model_card, dataset_card_names, content_hash
from harness.data import MissingDataError, open_eval_data
from harness.errors import HarnessError
from harness.results import SCHEMA_VERSION, elevater_predictions, finished_result, result_paths

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    protocol: str = "elevater"
    weights: str | None = None
    batch_size: int = 64
    workers: int | None = None
    device: str | None = None
    precision: str = "fp32"
    use_cache: bool = True
    refresh_cache: bool = False
    force: bool = False
    results_root: Path | None = None
    save_predictions: bool = True
    progress: bool = True

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(8, os.cpu_count() or 1)

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunSummary:
    model: str
    protocol: str
    done: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, dict] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # the protocol cannot score this dataset

    def lines(self) -> list[str]:
        out = [f"model {self.model}, protocol {self.protocol}: {len(self.done)} evaluated, "
               f"{len(self.skipped)} already done, {len(self.missing)} missing, {len(self.failed)} failed"]
        for name, res in {**self.skipped, **self.done}.items():
            out.append(f"  {name:34s} {res['metric']:>15s} {res['score']:7.2f}  ({res['n_images']} images)")
        if self.missing:
            out.append("  missing from the data root: " + ", ".join(sorted(self.missing)))
        if self.not_applicable:
            out.append(f"  not scored under the {self.protocol} protocol: " + ", ".join(sorted(self.not_applicable)))
        for name, msg in self.failed.items():
            out.append(f"  FAILED {name}: {msg}")
        return out


def _git_hash() -> str | None:
    """The commit of the checkout the harness runs from (None for an installed package)."""
    if paths.SOURCE_ROOT is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(paths.SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(paths.SOURCE_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("torch", "torchvision", "open_clip_torch", "vision-datasets", "vision-evaluation", "numpy",
                "scikit-learn", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def _run_identity(model_card: ModelCard, options: EvalOptions) -> str:
    return content_hash({"model_card": model_card.card_hash, "weights_override": options.weights})


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files left by a run killed mid-write (atomic writes never expose them as results)."""
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        try:
            tmp.unlink()
            logger.debug("removed leftover temp file %s", tmp)
        except OSError:
            pass


def evaluate(model: str | ModelCard, datasets: list[str | DatasetCard] | None, data_root: str | Path,
             options: EvalOptions | None = None, loaded: Any = None) -> RunSummary:
    """Evaluate one model card on datasets (all dataset cards when None)."""
    options = options or EvalOptions()
    model_card = model if isinstance(model, ModelCard) else get_model_card(model)
    names = datasets if datasets is not None else dataset_card_names()
    dataset_cards = [d if isinstance(d, DatasetCard) else get_dataset_card(d) for d in names]
    results_root = Path(options.results_root or paths.results_dir())
    summary = RunSummary(model=model_card.name, protocol=options.protocol)
    run_id = _run_identity(model_card, options)
    _remove_stale_temp_files(results_root / model_card.name / options.protocol)

    todo: list[DatasetCard] = []
    for dcard in dataset_cards:
        if options.protocol == "openclip" and dcard.multilabel and len(dataset_cards) > 1:
            summary.not_applicable[dcard.name] = "multilabel: the openclip protocol scores top-1/top-5 only"
            continue
        prev = None if options.force else finished_result(results_root, model_card.name, options.protocol, dcard.name)
        if prev and prev.get("run_identity") == run_id and prev["dataset"]["card_hash"] == dcard.card_hash:
            summary.skipped[dcard.name] = prev
            logger.info("%s: already done (%s), skipping", dcard.name, result_paths(
                results_root, model_card.name, options.protocol, dcard.name)["json"])
        else:
            if prev:
                logger.info("%s: stored result is stale (card or weights changed), recomputing", dcard.name)
            todo.append(dcard)

    # Open data first so missing datasets are known before the (possibly slow) model build.
    opened = []
    for dcard in todo:
        try:
            opened.append((dcard, open_eval_data(dcard, data_root)))
        except MissingDataError as exc:
            summary.missing[dcard.name] = str(exc)
            logger.info("%s", exc)
        except HarnessError as exc:
            if len(dataset_cards) == 1:
                raise
            summary.failed[dcard.name] = str(exc)
            logger.error("%s", exc)
    if not opened:
        return summary

    device = options.resolved_device()
    if loaded is None:
        from harness.models import build_model

        loaded = build_model(model_card, options.weights, device=device, precision=options.precision)
    for dcard, data in opened:
        try:
            result = _evaluate_one(loaded, dcard, data, options, results_root, run_id)
            summary.done[dcard.name] = result
        except HarnessError as exc:
            if len(dataset_cards) == 1:
                raise
            summary.failed[dcard.name] = str(exc)
            logger.error("%s: %s", dcard.name, exc)
    return summary


def _evaluate_one(loaded: Any, dcard: DatasetCard, data: Any, options: EvalOptions, results_root: Path,
                  run_id: str) -> dict:
    from harness.zeroshot import evaluate_dataset

    card = loaded.card
    workers = options.resolved_workers()
    outcome = evaluate_dataset(loaded, dcard, data, options.protocol, options.batch_size, workers,
                               use_cache=options.use_cache, refresh=options.refresh_cache, progress=options.progress)
    spec, preds, values = outcome.spec, outcome.predictions, outcome.metrics
    cache_key, hit = outcome.classifier_key, outcome.classifier_from_cache
    p = result_paths(results_root, card.name, options.protocol, dcard.name)
    write_npy(p["probs"], preds.probs)
    files = {"probs": p["probs"].name}
    if options.save_predictions:
        n_params = sum(x.numel() for x in loaded.model.parameters())
        n_visual = sum(x.numel() for x in loaded.model.visual.parameters())
        write_json(p["predictions"], elevater_predictions(
            card.elevater.MODEL_NAME if card.elevater else card.name, dcard.elevater.DATASET, preds.probs,
            n_params, n_visual), indent=None)
        files["predictions"] = p["predictions"].name
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_identity": run_id,
        "model": {
            "card": card.name, "card_hash": card.card_hash, "architecture": card.architecture,
            "method": card.method, "base_model": card.base_model, "retrieval_set": card.retrieval_set,
            "weights": loaded.weights_identity,
        },
        "dataset": {
            "card": dcard.name, "card_hash": dcard.card_hash, "content_hash": dcard.content_hash,
            "version": dcard.version, "layout": data.layout, "location": data.location, "split": dcard.eval_split,
        },
        "protocol": {
            "name": spec.name, "text_source": spec.text_source, "n_classes": len(spec.classnames),
            "n_templates": len(spec.templates), "text_hash": content_hash([spec.classnames, spec.templates]),
            "transform": spec.transform_desc, "logit_scale": 100.0, "classifier_cache_key": cache_key,
        },
        "metric": spec.primary_metric,
        "score": round(100.0 * values[spec.primary_metric], 4),
        "metrics": values,
        "n_images": len(data),
        "files": files,
        "provenance": {
            "packages": _package_versions(),
            "git": _git_hash(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": loaded.device,
            "device_name": _device_name(loaded.device),
            "precision": loaded.precision,
            "batch_size": options.batch_size,
            "workers": workers,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(preds.seconds, 3),
            "images_per_second": round(preds.images_per_second, 2),
            "classifier_from_cache": hit,
        },
    }
    write_json(p["json"], result)  # last: its presence marks the result as done
    logger.info("%s: %s = %.2f (%d images, %.1f img/s)", dcard.name, spec.primary_metric, result["score"],
                len(data), preds.images_per_second)
    return result
