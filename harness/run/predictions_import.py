"""Predictions made elsewhere, in as a run set: ``python -m harness import-predictions``.

The ELEVATER toolkit (``--save-predictions``) and this harness's own export
(:func:`harness.store.results.elevater_predictions`) write one JSON per dataset::

    {"model_name", "dataset_name", "num_trainable_params", "num_params", "num_visual_params",
     "num_backbone_params", "n_shot", "rnd_seeds", "predictions": [[N x C probabilities], ...one list per seed]}

An import checks the file against the dataset (``dataset_name`` is the card's ``elevater.DATASET``, N is the number of
images of the data under ``--data-root``, C the card's class count, every value finite and in [0, 1], multiclass rows
summing to 1), scores it with the card's metrics exactly as ``eval`` does (:func:`harness.engine.protocols.elevater_metrics`
+ :func:`harness.engine.metrics.compute` on the labels of that data) and writes a normal schema-2 result
(:func:`harness.store.results.result_record`) under ``<results>/imported/<slug of label>/<model>/elevater/`` with the same
ordered write as ``eval`` (probabilities first under a run-unique name, the JSON last, under the result's lock). That
folder is a run set of its own: ``table --results`` reads it, ``report`` finds it, and the harness's own results
(``<results>/*/*/*.json``) never include it. Its run key: ``source: imported``, the sha256 of the file, the card's
scoring content and the data fingerprint; importing the same file again reuses the stored result. A file that does not
fit raises :class:`HarnessError` naming it, what was expected and what was found, and nothing is written.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core import paths
from harness.core.paths import slug
from harness.core.atomic import check_writable_dir, file_lock, remove_stale_temp_files, write_json, write_npy
from harness.cards import DatasetCard, content_hash, get_dataset_card, get_model_card
from harness.data.testsets import EvalData, open_eval_data
from harness.core.errors import HarnessError
from harness.core.safe_read import parse_json, read_bounded_bytes
from harness.engine.metrics import compute
from harness.engine.protocols import elevater_metrics
from harness.store.results import data_file_names, finished_result, lock_path, result_json, scan_results
from harness.store.runkey import PROTOCOL_VERSIONS, RunKey, dataset_scoring_content
from harness.store.results import result_record
from harness.store.results import refuse_newer, remove_unlisted_data_files

logger = logging.getLogger(__name__)

DEFAULT_LABEL = "ELEVATER toolkit (official)"
IMPORTED_DIR = "imported"  # <results>/imported/<slug of label>/ holds one imported run set
PROTOCOL = "elevater"  # the toolkit's zero-shot protocol: imported results sit beside the harness's elevater ones
REQUIRED_KEYS = ("model_name", "dataset_name", "predictions")
META_KEYS = ("num_trainable_params", "num_params", "num_visual_params", "num_backbone_params", "n_shot", "rnd_seeds")
VALUE_ATOL = 1e-6  # values outside [0, 1] by more than this are not probabilities
ROW_SUM_ATOL = 1e-4  # + 5e-7 per class: the export rounds each value to 6 decimals
RANKING_METRICS = ("11point_mAP", "roc_auc")  # scores of the order of the values: ties change them


@dataclass
class PredictionsFile:
    """One seed's predictions read from a predictions JSON, with the file's other fields."""
    path: Path
    sha256: str
    model_name: str
    dataset_name: str
    seed_index: int
    probs: np.ndarray  # (N, C) float32, as the harness stores probabilities
    meta: dict[str, Any]


@dataclass
class ImportOutcome:
    result: dict
    path: Path  # the result JSON
    reused: bool  # the same file was already imported: nothing written


def run_set_folder(results_root: Path, label: str) -> Path:
    return Path(results_root) / IMPORTED_DIR / slug(label)


def default_model(model_name: str) -> str:
    """The model card name an import gets without ``--model``: the file's ``model_name`` without the toolkit's
    ``CLIP-`` prefix, as a slug ("CLIP-clip_react" -> "clip_react"; this harness's export of a card -> the card)."""
    return slug(re.sub(r"^CLIP-", "", model_name))


def read_predictions(path: str | Path, seed_index: int | None = None) -> PredictionsFile:
    """The predictions of one seed of an ELEVATER predictions JSON; HarnessError when the file is not one."""
    path = Path(path)
    what = f"{path}: expected an ELEVATER predictions JSON ({{{', '.join(REQUIRED_KEYS)}, ...}}, as the toolkit's " \
           f"--save-predictions writes)"
    try:  # bounded: a regular file, refused by its size before it is read, nesting checked before parsing
        raw = read_bounded_bytes(path, "predictions")
        data = parse_json(raw, path, "predictions")
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read the predictions file ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{what}, found a file that is not JSON ({exc}).") from exc
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        found = f"keys {', '.join(sorted(map(str, data)))}" if isinstance(data, dict) else \
            f"a JSON {type(data).__name__}"
        raise HarnessError(f"{what}, found {found}.")
    seeds = data["predictions"]
    if not isinstance(seeds, list) or not seeds:
        raise HarnessError(f"{what}: 'predictions' must be a non-empty list of one N x C list per seed, found "
                           f"{type(seeds).__name__} of length {len(seeds) if isinstance(seeds, list) else '-'}.")
    if seed_index is None and len(seeds) != 1:
        raise HarnessError(f"{path}: holds {len(seeds)} seed lists (rnd_seeds {data.get('rnd_seeds')}); expected "
                           f"exactly one, or pick one with --seed-index 0..{len(seeds) - 1}.")
    index = 0 if seed_index is None else seed_index
    if not 0 <= index < len(seeds):
        raise HarnessError(f"{path}: --seed-index {index} is out of range; the file holds {len(seeds)} seed lists.")
    try:
        probs = np.asarray(seeds[index], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"{what}: predictions[{index}] must be N rows of C numbers, found rows of different "
                           f"lengths or non-numbers ({exc}).") from exc
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise HarnessError(f"{what}: predictions[{index}] must be N rows of C numbers, found an array of shape "
                           f"{probs.shape}.")
    for key in ("model_name", "dataset_name"):
        if not isinstance(data[key], str):
            raise HarnessError(f"{what}: '{key}' must be a string, found {data[key]!r}.")
    return PredictionsFile(path=path, sha256=hashlib.sha256(raw).hexdigest(), model_name=data["model_name"],
                       dataset_name=data["dataset_name"], seed_index=index, probs=probs,
                       meta={k: data[k] for k in META_KEYS if k in data})


def check_against(pred: PredictionsFile, dcard: DatasetCard, data: EvalData) -> np.ndarray:
    """The predictions as (N, C) float32 probabilities once they fit the card and the data; else HarnessError."""
    where = f"{pred.path} (seed list {pred.seed_index})"
    expected = dcard.elevater.DATASET
    if pred.dataset_name != expected:
        raise HarnessError(f"{pred.path}: dataset_name is '{pred.dataset_name}', expected '{expected}' (the "
                           f"elevater.DATASET of card {dcard.name}). Wrong file or wrong --dataset?")
    rows, cols = pred.probs.shape
    if rows != len(data):
        raise HarnessError(f"{where}: {rows} rows, expected {len(data)} (the images of {dcard.name} in "
                           f"{data.location}). Predictions of another version of the data?")
    if cols != dcard.num_classes:
        raise HarnessError(f"{where}: {cols} columns, expected {dcard.num_classes} (the classes of card "
                           f"{dcard.name}).")
    bad = ~np.isfinite(pred.probs)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise HarnessError(f"{where}: {int(bad.sum())} values are not finite (first: row {r}, column {c}: "
                           f"{pred.probs[r, c]}); expected probabilities in [0, 1].")
    lo, hi = float(pred.probs.min()), float(pred.probs.max())
    if lo < -VALUE_ATOL or hi > 1 + VALUE_ATOL:
        raise HarnessError(f"{where}: values range over [{lo}, {hi}], expected probabilities in [0, 1] (logits or "
                           f"scores are not accepted).")
    if not dcard.multilabel:
        off = np.abs(pred.probs.sum(axis=1) - 1.0)
        tol = ROW_SUM_ATOL + 5e-7 * cols
        if off.max() > tol:
            r = int(off.argmax())
            raise HarnessError(f"{where}: row {r} sums to {pred.probs[r].sum():.6f}, expected 1 (within {tol:.1e}) "
                               f"for the multiclass dataset {dcard.name}: softmax probabilities.")
    return pred.probs.astype(np.float32)


def score_predictions(dcard: DatasetCard, probs: np.ndarray, labels: np.ndarray, source: str = "") -> dict[str, float]:
    """The card's metrics on the probabilities, as ``eval`` computes them. Ranking metrics (mAP, ROC AUC) of a
    file rounded to 6 decimals can differ from the producer's own number: rounding ties values (logged)."""
    values = compute(elevater_metrics(dcard), probs, labels)
    if not all(math.isfinite(v) for v in values.values()):
        raise HarnessError(f"non-finite metric {values} for {dcard.name}: nothing was recorded.")
    if dcard.metric in RANKING_METRICS:
        ties = sum(len(col) - len(np.unique(col)) for col in probs.T)
        if ties:
            logger.warning("%s: %d tied values within class columns (6-decimal rounding?): its %s is of the values "
                           "as written and can differ from one computed at full precision", source or dcard.name,
                           ties, dcard.metric)
    return values


def _model_record(name: str | None, pred: PredictionsFile) -> dict:
    """The result's ``model``: the card's fields when ``name`` (``--model``) is a card; a name derived from the
    file's model_name otherwise (it then pairs with no harness run unless such a card exists)."""
    card = None
    if name is not None:
        card = get_model_card(name)  # an explicit --model must be a card (a typo is an error, not a new name)
    else:
        name = default_model(pred.model_name)
        try:
            card = get_model_card(name)
        except HarnessError:
            logger.info("model_name '%s' -> '%s', which is no model card: pass --model CARD to pair the import "
                        "with that card's results", pred.model_name, name)
    weights = {"source": "imported", "file": None, "sha256": None}
    if card is None:
        return {"card": name, "card_hash": None, "architecture": None, "method": None, "base_model": None,
                "retrieval_set": None, "weights": weights}
    return {"card": card.name, "card_hash": card.card_hash, "architecture": card.architecture, "method": card.method,
            "base_model": card.base_model, "retrieval_set": card.retrieval_set, "weights": weights}


def _protocol_record(dcard: DatasetCard) -> dict:
    """What the import knows of how the predictions were made: the protocol's name and the class count; the
    text, transform and logit scale were the producer's and are not recorded."""
    return {"name": PROTOCOL, "version": PROTOCOL_VERSIONS[PROTOCOL], "n_classes": dcard.num_classes,
            "text_source": "imported predictions (computed outside this harness)", "n_templates": None,
            "text_hash": None, "transform": None, "logit_scale": None, "classifier_cache_key": None}


def import_predictions(path: str | Path, dataset: str | DatasetCard, data_root: str | Path, model: str | None = None,
                       label: str = DEFAULT_LABEL, results_root: str | Path | None = None,
                       seed_index: int | None = None) -> ImportOutcome:
    """Check, score and store one predictions file as a result of the run set ``label``."""
    if not label.strip():
        raise HarnessError("--label must not be empty: it names the imported run set in reports.")
    dcard = dataset if isinstance(dataset, DatasetCard) else get_dataset_card(dataset)
    pred = read_predictions(path, seed_index)
    data = open_eval_data(dcard, data_root)
    probs = check_against(pred, dcard, data)
    values = score_predictions(dcard, probs, data.labels, str(pred.path))
    model_record = _model_record(model, pred)
    key = RunKey({"source": "imported", "predictions_sha256": pred.sha256,
                  "dataset": content_hash(dataset_scoring_content(dcard)), "data": data.fingerprint()})

    root = check_writable_dir(Path(results_root or paths.results_dir()), "results folder", "--results")
    run_root = run_set_folder(root, label)
    out = result_json(run_root, model_record["card"], PROTOCOL, dcard.name)
    with file_lock(lock_path(run_root, model_record["card"], PROTOCOL, dcard.name)):
        prev = finished_result(out, key.hash)
        if prev is not None:
            logger.info("%s: already imported as %s", pred.path, out)
            return ImportOutcome(prev, out, reused=True)
        refuse_newer(out)
        remove_stale_temp_files(out.parent)  # safe: writers of this result hold this lock
        names = data_file_names(dcard.name, f"{key.hash[:8]}{secrets.token_hex(3)}")
        write_npy(out.parent / names["probs"], probs)
        files = {"probs": names["probs"]}
        result = result_record(key, model_record, dcard, data, _protocol_record(dcard), dcard.metric, values,
                               len(data), files, {
                                   "imported_from": str(pred.path.resolve()), "label": label,
                                   "imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                   "source": {"model_name": pred.model_name, "dataset_name": pred.dataset_name,
                                              "seed_index": pred.seed_index, **pred.meta}}, out.parent)
        write_json(out, result)  # the commit point
        remove_unlisted_data_files(out.parent, dcard.name, files)
    logger.info("%s: %s = %.2f (%d images) from %s", dcard.name, dcard.metric, result["score"], len(data), pred.path)
    return ImportOutcome(result, out, reused=False)


# ----------------------------------------------------------------------------------------------------------------------
# reading imported run sets back (report, cross-check)

def is_imported(result: dict) -> bool:
    return bool((result.get("provenance") or {}).get("imported_from"))


def run_set_label(folder: Path) -> str | None:
    """The label recorded in an imported run set's results (the first, by path; None when it holds none)."""
    labels = sorted({r["provenance"].get("label") for r in scan_results(folder)[0] if is_imported(r)} - {None})
    if len(labels) > 1:
        logger.warning("%s holds imports labelled %s; using '%s'", folder, ", ".join(labels), labels[0])
    return labels[0] if labels else None


def imported_run_sets(results_root: Path) -> list[tuple[str, Path]]:
    """(label, folder) of every imported run set under a results folder (``<results>/imported/*/``)."""
    out = []
    for folder in sorted(p for p in (Path(results_root) / IMPORTED_DIR).glob("*") if p.is_dir()):
        out.append((run_set_label(folder) or folder.name, folder))
    return out


def load_probs(result_path: str | Path, result: dict) -> np.ndarray:
    """The (N, C) probabilities a result lists (``files.probs``, beside its JSON)."""
    return np.load(Path(result_path).parent / result["files"]["probs"])


def load_imported(results_root: str | Path, model: str, dataset: str) -> list[tuple[str, dict, np.ndarray]]:
    """(label, result, probs) of every finished import of (model card, dataset) under ``<results_root>/imported/``."""
    out = []
    for label, folder in imported_run_sets(Path(results_root)):
        path = result_json(folder, model, PROTOCOL, dataset)
        result = finished_result(path)
        if result is not None and is_imported(result):
            out.append((label, result, load_probs(path, result)))
    return out
