"""Metrics with the ELEVATER toolkit's semantics, computed by vision-evaluation's evaluators as the toolkit does.

Inputs are the softmax probabilities (N, C) the zero-shot engine produces (the toolkit applies softmax even for the
multilabel VOC set) and labels: (N,) class indices, or (N, C) 0/1 for multilabel. Values are fractions in [0, 1].

Semantics worth knowing (kept on purpose, they are what published ELEVATER numbers mean):
- ``mean-per-class`` is vision-evaluation's BalancedAccuracyScoreEvaluator: classes with no test image are dropped
  *before* the argmax, so a prediction can only go to a class that occurs in the labels.
- ``11point_mAP`` is MeanAveragePrecisionNPointsEvaluator(11): interpolated precision at recall 1.0, 0.9, ..., 0.0,
  where precision at recall 0 counts as 1 (sklearn's curve ends at (recall 0, precision 1)); classes with no
  positives are dropped. It is therefore not the classic VOC07 number.
- ``roc_auc`` on 2 classes scores column 1 (the positive class), as the toolkit's metric.py does.
"""
from __future__ import annotations

import numpy as np

# metric id -> human label
METRIC_LABELS = {
    "accuracy": "Top-1 accuracy",
    "accuracy_top5": "Top-5 accuracy",
    "mean-per-class": "Mean per-class accuracy",
    "11point_mAP": "11-point mAP",
    "roc_auc": "ROC AUC",
}


def _check(probs: np.ndarray, labels: np.ndarray, multilabel: bool) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (N, C), got shape {probs.shape}")
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} predictions but {len(labels)} labels")
    if multilabel and labels.shape != probs.shape:
        raise ValueError(f"multilabel labels must be (N, C) = {probs.shape}, got {labels.shape}")
    if not multilabel and labels.ndim != 1:
        raise ValueError(f"multiclass labels must be (N,), got {labels.shape}")
    if not multilabel and len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}, found {labels.min()}..{labels.max()}")
    if not multilabel and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"multiclass labels must be integers, got dtype {labels.dtype}")


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    from vision_evaluation.evaluators import TopKAccuracyEvaluator

    probs, labels = np.asarray(probs), np.asarray(labels)
    _check(probs, labels, False)
    evaluator = TopKAccuracyEvaluator(k)
    evaluator.add_predictions(np.asarray(probs), np.asarray(labels))
    return float(evaluator.get_report()[f"accuracy_top{k}"])


def mean_per_class(probs: np.ndarray, labels: np.ndarray) -> float:
    from vision_evaluation.evaluators import BalancedAccuracyScoreEvaluator

    probs, labels = np.asarray(probs), np.asarray(labels)
    _check(probs, labels, False)
    evaluator = BalancedAccuracyScoreEvaluator()
    evaluator.add_predictions(np.asarray(probs), np.asarray(labels))
    return float(evaluator.get_report()["balanced_accuracy"])


def map_11_points(probs: np.ndarray, labels: np.ndarray) -> float:
    from vision_evaluation.evaluators import MeanAveragePrecisionNPointsEvaluator

    probs, labels = np.asarray(probs), np.asarray(labels)
    _check(probs, labels, True)
    evaluator = MeanAveragePrecisionNPointsEvaluator(11)
    evaluator.add_predictions(np.asarray(probs), np.asarray(labels).astype(int))
    return float(evaluator.get_report()["mAP_11_points"])


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    probs, labels = np.asarray(probs), np.asarray(labels)
    _check(probs, labels, False)
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


def compute(metric_ids: list[str], probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Compute each metric id (see METRIC_LABELS) on the same predictions."""
    out: dict[str, float] = {}
    for mid in metric_ids:
        if mid == "accuracy":
            out[mid] = topk_accuracy(probs, labels, 1)
        elif mid == "accuracy_top5":
            out[mid] = topk_accuracy(probs, labels, min(5, probs.shape[1]))
        elif mid == "mean-per-class":
            out[mid] = mean_per_class(probs, labels)
        elif mid == "11point_mAP":
            out[mid] = map_11_points(probs, labels)
        elif mid == "roc_auc":
            out[mid] = roc_auc(probs, labels)
        else:
            raise ValueError(f"unknown metric '{mid}'; known: {', '.join(METRIC_LABELS)}")
    return out


def agreement(probs_a: np.ndarray, probs_b: np.ndarray, multilabel: bool = False) -> dict[str, float | None]:
    """How two runs' probabilities of the same images compare: ``agreement`` (% of images whose top-1 prediction is
    the same; None for multilabel sets, where a softmax top-1 means little) and ``max_abs_dprob`` (the largest
    |difference| of one probability). Both None when the shapes differ (other images or classes)."""
    if probs_a.shape != probs_b.shape:
        return {"agreement": None, "max_abs_dprob": None}
    a, b = probs_a.astype(np.float64), probs_b.astype(np.float64)
    same_top1 = None if multilabel else 100.0 * float((a.argmax(1) == b.argmax(1)).mean())
    return {"agreement": same_top1, "max_abs_dprob": float(np.abs(a - b).max())}


def import_in_background() -> None:
    """Start importing vision-evaluation (and so scikit-learn, ~1.7 s on 2 cores) on a thread, once per process: the
    image pass runs meanwhile (torch releases the GIL), and :func:`compute` finds the modules loaded. Python's import
    lock makes a concurrent import of the same module wait for this one, never load it twice."""
    import sys
    import threading

    if "vision_evaluation.evaluators" in sys.modules or getattr(import_in_background, "started", False):
        return
    import_in_background.started = True  # type: ignore[attr-defined]

    def load() -> None:
        try:
            import importlib

            importlib.import_module("vision_evaluation.evaluators")
        except Exception:  # compute() imports it again and reports the real error
            pass

    # not a daemon: interpreter exit waits for the import to finish (a daemon thread killed inside a C extension's
    # import aborts the process with "terminate called without an active exception")
    threading.Thread(target=load, name="import-vision-evaluation", daemon=False).start()
