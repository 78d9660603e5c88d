"""The results store: one JSON per (model card, dataset card, protocol), probabilities and a predictions export.

Layout::

    <results>/<model>/<protocol>/<dataset>.json              the result (schema below); written last
    <results>/<model>/<protocol>/<dataset>.probs.npy         (N, C) float32 softmax probabilities, dataset order
    <results>/<model>/<protocol>/<dataset>.predictions.json  ELEVATER toolkit-style predictions (leaderboard format)

Result JSON, ``schema_version`` 1:
- ``model``: card, card_hash, architecture, method, base_model, retrieval_set, weights {source, file, sha256}
- ``dataset``: card, card_hash, content_hash (class names + templates), version, layout, location, split
- ``protocol``: name, text_source, n_classes, n_templates, text_hash, transform, logit_scale, classifier_cache_key
- ``metric`` (primary metric id), ``score`` (primary metric in percent), ``metrics`` {id: fraction in [0, 1]}
- ``n_images``; ``files`` {probs, predictions}
- ``provenance``: packages, git, python, platform, device, device_name, precision, batch_size, workers, date,
  seconds, images_per_second
A result counts as done only when the JSON and every file it lists exist. Every write is atomic.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def result_paths(results_root: Path, model: str, protocol: str, dataset: str) -> dict[str, Path]:
    folder = Path(results_root) / model / protocol
    return {
        "json": folder / f"{dataset}.json",
        "probs": folder / f"{dataset}.probs.npy",
        "predictions": folder / f"{dataset}.predictions.json",
    }


def read_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"Result file {path} is unreadable ({exc}); delete it to recompute.") from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise HarnessError(f"Result file {path} has schema_version {data.get('schema_version')}, this harness "
                           f"reads {SCHEMA_VERSION}; re-run the evaluation with --force.")
    return data


def finished_result(results_root: Path, model: str, protocol: str, dataset: str) -> dict | None:
    """The stored result when it is complete (JSON readable and every file it lists present), else None."""
    p = result_paths(results_root, model, protocol, dataset)
    if not p["json"].is_file():
        return None
    try:
        data = read_result(p["json"])
    except HarnessError as exc:
        logger.warning("%s", exc)
        return None
    for name in (data.get("files") or {}).values():
        if name and not (p["json"].parent / name).is_file():
            return None
    return data


def iter_results(results_root: Path) -> Iterator[dict]:
    """Every finished result under a results folder (unreadable files are skipped with a warning)."""
    for path in sorted(Path(results_root).glob("*/*/*.json")):
        if path.name.endswith(".predictions.json"):
            continue
        try:
            data = read_result(path)
        except HarnessError as exc:
            logger.warning("%s", exc)
            continue
        data["_path"] = str(path)
        yield data


def elevater_predictions(model_name: str, dataset_name: str, probs, num_params: int | None,
                         num_visual_params: int | None) -> dict[str, Any]:
    """The toolkit's zero-shot submission format (commands/zeroshot.py with --save-predictions True)."""
    import numpy as np

    return {
        "model_name": f"CLIP-{model_name}",
        "dataset_name": dataset_name,
        "num_trainable_params": 0,
        "num_params": num_params,
        "num_visual_params": num_visual_params,
        "num_backbone_params": num_params,
        "n_shot": 0,
        "rnd_seeds": [0],
        "predictions": [np.round(np.asarray(probs, dtype=np.float64), 6).tolist()],
    }
