"""The training log's schema: ``<logs>/<run name>/metrics.jsonl``, one JSON object per line.

``training.main`` writes it and ``harness.report`` reads it; both use the names below, so a renamed key cannot
silently empty the report's training table. Three kinds of rows, told apart by their keys:

- step rows (every ``--log-every-n-steps``): ``epoch`` (0-based), ``step`` (1-based global step), ``batch``,
  ``num_batches``, ``loss``, ``lr``, ``logit_scale``, ``samples_per_second`` [, ``gpu_mem_peak_gib``];
- epoch rows (after each epoch): ``epoch`` (epochs completed), ``train_loss_mean``, ``train_steps``,
  ``epoch_seconds``, ``skipped_samples_total``;
- eval rows (zero-shot): ``epoch`` (epochs completed), ``eval_dataset`` (dataset card) and one key per metric,
  ``<prefix>-<metric>`` (OpenCLIP's names: ``imagenet-zeroshot-val-top1`` for ImageNet-1K,
  ``<dataset>-zeroshot-top1`` elsewhere; top1/top5 for accuracy/accuracy_top5, else the metric id).
- data-set rows (at the start of training, when the shards come from ``python -m training.pairs``): ``epoch``
  (the start epoch) and ``train_data_set``: the summary of the shards' ``availability.json``
  (:func:`harness.core.pairs_availability.summary`: source parquet, download date, successes, total, rate).
Every row also has ``time`` (ISO 8601, seconds).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

TIME = "time"
EPOCH = "epoch"
STEP = "step"
BATCH = "batch"
NUM_BATCHES = "num_batches"
LOSS = "loss"
LR = "lr"
LOGIT_SCALE = "logit_scale"
SAMPLES_PER_SECOND = "samples_per_second"
GPU_MEM_PEAK_GIB = "gpu_mem_peak_gib"
TRAIN_LOSS_MEAN = "train_loss_mean"
TRAIN_STEPS = "train_steps"
EPOCH_SECONDS = "epoch_seconds"
SKIPPED_SAMPLES_TOTAL = "skipped_samples_total"
EVAL_DATASET = "eval_dataset"
TRAIN_DATA_SET = "train_data_set"

IMAGENET_PREFIX = "imagenet-zeroshot-val"  # open_clip_train's key prefix for its ImageNet zero-shot eval
_METRIC_SUFFIX = {"accuracy": "top1", "accuracy_top5": "top5"}
TOP1_SUFFIX = "-top1"


def zeroshot_key(dataset: str, metric: str, imagenet_dataset: str) -> str:
    """The key of one zero-shot metric in an eval row (OpenCLIP's naming)."""
    prefix = IMAGENET_PREFIX if dataset == imagenet_dataset else f"{dataset}-zeroshot"
    return f"{prefix}-{_METRIC_SUFFIX.get(metric, metric)}"


def is_step_row(row: dict) -> bool:
    return STEP in row and LOSS in row


def is_epoch_row(row: dict) -> bool:
    return TRAIN_LOSS_MEAN in row


def is_eval_row(row: dict) -> bool:
    return EVAL_DATASET in row


def is_data_set_row(row: dict) -> bool:
    return isinstance(row.get(TRAIN_DATA_SET), dict)


def train_data_set(rows: list[dict]) -> dict | None:
    """The retrieved-pairs set a run trained on (its last data-set row), None when it recorded none."""
    return next((r[TRAIN_DATA_SET] for r in reversed(rows) if is_data_set_row(r)), None)


def eval_top1(row: dict) -> float | None:
    """The top-1 accuracy (fraction) of an eval row, None when it has none."""
    return next((v for k, v in row.items() if k.endswith(TOP1_SUFFIX)), None)


def read_metrics(path: Path) -> list[dict]:
    """The rows of one metrics.jsonl; a line that is not a JSON object (a run killed mid-write) is skipped."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: not JSON, skipped", path, n)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def iter_runs(root: Path) -> Iterator[tuple[str, list[dict]]]:
    """(run name, rows) for every ``<root>/<run>/metrics.jsonl`` that has rows."""
    for path in sorted(Path(root).glob(f"*/{METRICS_FILE}")):
        rows = read_metrics(path)
        if rows:
            yield path.parent.name, rows


def append_row(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
