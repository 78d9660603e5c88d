"""Numbers from harness.engine.metrics checked against independent references.

Every test compares a value computed through harness.engine.metrics (i.e. through vision-evaluation's evaluators, as the
ELEVATER toolkit does) with something computed another way: plain numpy, scikit-learn, a brute-force
implementation written here, or a value worked out by hand. Random cases use numpy.random.default_rng with fixed
seeds; probability rows are softmax of random logits.
"""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score, top_k_accuracy_score

from harness.engine import metrics

SEEDS = [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- helpers
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def random_probs(rng: np.random.Generator, n: int, c: int, scale: float = 2.0) -> np.ndarray:
    return softmax(rng.normal(scale=scale, size=(n, c)))


def labels_with_every_class(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    assert n >= c
    labels = np.concatenate([np.arange(c), rng.integers(0, c, size=n - c)])
    return rng.permutation(labels).astype(np.int64)


def assert_no_row_ties(probs: np.ndarray) -> None:
    for row in probs:
        assert len(np.unique(row)) == len(row), "random case unexpectedly has tied scores"


def numpy_topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == labels[:, None], axis=1)))


def hand_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in y_true of (correct predictions of that class) / (its images)."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def brute_force_ap_11(scores: np.ndarray, positives: np.ndarray) -> float:
    """11-point interpolated AP of one class, brute force, exact arithmetic.

    Operating points: for every distinct score t, predict positive where score >= t (tp, precision = tp / #predicted),
    plus the end point (recall 0, precision 1). For r = 1.0, 0.9, ..., 0.0 take the max precision over the points with
    recall >= r (compared exactly: 10 * tp >= k * n_pos), then average the 11 values.
    """
    positives = positives.astype(bool)
    n_pos = int(positives.sum())
    assert n_pos > 0
    points = [(0, Fraction(1))]  # (tp, precision): the (recall 0, precision 1) end point
    for t in np.unique(scores):
        predicted = scores >= t
        tp = int(np.sum(predicted & positives))
        points.append((tp, Fraction(tp, int(predicted.sum()))))
    interp = [max(p for tp, p in points if 10 * tp >= k * n_pos) for k in range(10, -1, -1)]
    return float(sum(interp) / 11)


def brute_force_map_11(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of brute_force_ap_11 over the classes with at least one positive (the others are dropped)."""
    aps = [brute_force_ap_11(scores[:, j], labels[:, j]) for j in range(labels.shape[1]) if labels[:, j].any()]
    return float(np.mean(aps))


def mann_whitney_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2, by counting all pairs."""
    pos = scores[positives.astype(bool)]
    neg = scores[~positives.astype(bool)]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def random_multilabel(rng: np.random.Generator, n: int, c: int, p: float = 0.3) -> np.ndarray:
    labels = (rng.random((n, c)) < p).astype(np.uint8)
    for j in range(c):  # every class gets at least one positive
        if not labels[:, j].any():
            labels[rng.integers(n), j] = 1
    return labels


# ---------------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_classes", [3, 10, 37])
def test_top1_accuracy_matches_numpy_and_sklearn(seed, n_classes):
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, 200, n_classes)
    labels = rng.integers(0, n_classes, size=200)
    assert_no_row_ties(probs)

    got = metrics.topk_accuracy(probs, labels, 1)
    assert isinstance(got, float)
    assert got == pytest.approx(float(np.mean(np.argmax(probs, axis=1) == labels)), abs=1e-12)
    assert got == pytest.approx(top_k_accuracy_score(labels, probs, k=1, labels=np.arange(n_classes)), abs=1e-12)
    assert 0.0 < got < 1.0  # non-degenerate case


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_classes", [6, 10, 37])
def test_top5_accuracy_matches_numpy_and_sklearn(seed, n_classes):
    rng = np.random.default_rng(100 + seed)
    probs = random_probs(rng, 200, n_classes)
    labels = rng.integers(0, n_classes, size=200)
    assert_no_row_ties(probs)

    got = metrics.topk_accuracy(probs, labels, 5)
    assert got == pytest.approx(numpy_topk_accuracy(probs, labels, 5), abs=1e-12)
    assert got == pytest.approx(top_k_accuracy_score(labels, probs, k=5, labels=np.arange(n_classes)), abs=1e-12)
    assert got >= metrics.topk_accuracy(probs, labels, 1)
    assert 0.0 < got < 1.0


def test_top1_ties_take_first_max_index():
    """With tied maxima the toolkit's top-1 (np.argmax) predicts the *first* tied index.

    sklearn's top_k_accuracy_score breaks the same ties the other way (last index), so the two disagree here;
    this pins the toolkit's behaviour.
    """
    probs = np.array([
        [0.4, 0.4, 0.2],   # tie 0/1 -> predicts 0
        [0.4, 0.4, 0.2],   # tie 0/1 -> predicts 0
        [0.1, 0.45, 0.45],  # tie 1/2 -> predicts 1
        [0.1, 0.45, 0.45],  # tie 1/2 -> predicts 1
        [0.2, 0.3, 0.5],   # no tie  -> predicts 2
    ])
    labels = np.array([0, 1, 1, 2, 2])
    # first-index rule: correct on rows 0, 2, 4
    assert metrics.topk_accuracy(probs, labels, 1) == pytest.approx(3 / 5)
    assert metrics.compute(["accuracy"], probs, labels)["accuracy"] == pytest.approx(3 / 5)
    # last-index rule (sklearn): correct on rows 1, 3, 4
    assert top_k_accuracy_score(labels, probs, k=1, labels=np.arange(3)) == pytest.approx(3 / 5)
    flipped_labels = np.array([0, 0, 1, 1, 2])  # first-index rule: all correct; last-index rule: only row 4
    assert metrics.topk_accuracy(probs, flipped_labels, 1) == pytest.approx(1.0)
    assert top_k_accuracy_score(flipped_labels, probs, k=1, labels=np.arange(3)) == pytest.approx(1 / 5)


def test_topk_ties_inside_the_top_k_do_not_matter():
    """Ties that lie entirely inside (or entirely outside) the top-k set leave top-k unambiguous."""
    probs = np.array([
        [0.30, 0.30, 0.20, 0.10, 0.05, 0.05],  # top-2 = {0, 1} whatever the tie-break
        [0.05, 0.05, 0.10, 0.20, 0.30, 0.30],  # top-2 = {4, 5}
        [0.25, 0.25, 0.25, 0.25, 0.00, 0.00],  # top-4 = {0, 1, 2, 3}
    ])
    # k = 2 (row 2 has a 4-way tie for the top-2, so only its zero-probability labels 4, 5 are unambiguous: out)
    assert metrics.topk_accuracy(probs, np.array([1, 4, 4]), 2) == pytest.approx(2 / 3)
    assert metrics.topk_accuracy(probs, np.array([0, 5, 5]), 2) == pytest.approx(2 / 3)
    assert metrics.topk_accuracy(probs, np.array([2, 3, 4]), 2) == pytest.approx(0.0)
    # k = 4: top-4 sets {0, 1, 2, 3}, {2, 3, 4, 5}, {0, 1, 2, 3}
    assert metrics.topk_accuracy(probs, np.array([1, 5, 3]), 4) == pytest.approx(1.0)
    assert metrics.topk_accuracy(probs, np.array([4, 0, 2]), 4) == pytest.approx(1 / 3)
    for labels, k in [([1, 4, 4], 2), ([0, 5, 5], 2), ([1, 5, 3], 4), ([4, 0, 2], 4)]:
        assert metrics.topk_accuracy(probs, np.array(labels), k) == pytest.approx(
            top_k_accuracy_score(labels, probs, k=k, labels=np.arange(6)))


def test_top5_with_fewer_than_5_classes_is_trivially_one():
    """compute('accuracy_top5') uses k = min(5, C): with C <= 5 every label is in the top k, so the value is 1."""
    rng = np.random.default_rng(7)
    for c in (2, 3, 5):
        probs = random_probs(rng, 50, c)
        labels = rng.integers(0, c, size=50)
        assert metrics.compute(["accuracy_top5"], probs, labels) == {"accuracy_top5": 1.0}
        assert metrics.topk_accuracy(probs, labels, 5) == 1.0


# ---------------------------------------------------------------------------------------------------- mean-per-class
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_classes", [2, 5, 20])
def test_mean_per_class_matches_sklearn_when_every_class_occurs(seed, n_classes):
    rng = np.random.default_rng(200 + seed)
    labels = labels_with_every_class(rng, 150, n_classes)
    # imbalanced: make class 0 much more frequent so balanced != plain accuracy
    labels = np.concatenate([labels, np.zeros(100, dtype=np.int64)])
    probs = random_probs(rng, len(labels), n_classes)
    assert set(labels.tolist()) == set(range(n_classes))

    got = metrics.mean_per_class(probs, labels)
    pred = np.argmax(probs, axis=1)
    assert got == pytest.approx(balanced_accuracy_score(labels, pred), abs=1e-12)
    assert got == pytest.approx(hand_balanced_accuracy(labels, pred), abs=1e-12)
    assert got != pytest.approx(float(np.mean(pred == labels)), abs=1e-6)


def test_mean_per_class_absent_class_fixed_example():
    """A class with no test image is dropped *before* the argmax (vision-evaluation's BalancedAccuracyScoreEvaluator
    keeps only the label-matrix columns that have a positive), so no prediction can go to it.

    Here C = 3 and class 2 never occurs. Toolkit semantics: argmax over columns {0, 1} only -> predictions
    0, 0, 1, 0 -> recall(0) = 2/2, recall(1) = 1/2 -> 0.75. The naive value (argmax over all 3 columns, rows 1 and 2
    predicted as class 2 and counted wrong) would be recall(0) = 1/2, recall(1) = 0 -> 0.25.
    """
    labels = np.array([0, 0, 1, 1])
    probs = np.array([
        [0.5, 0.2, 0.3],
        [0.2, 0.1, 0.7],
        [0.1, 0.3, 0.6],
        [0.6, 0.3, 0.1],
    ])
    assert metrics.mean_per_class(probs, labels) == pytest.approx(0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has a class not in y_true
        naive = balanced_accuracy_score(labels, np.argmax(probs, axis=1))
    assert naive == pytest.approx(0.25)


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_per_class_absent_classes_random(seed):
    """Random case where classes 1 and 4 (of 7) have no test image.

    Documented toolkit semantics: the columns of classes absent from the labels are dropped before the argmax,
    i.e. prediction = argmax over the columns of the classes present in the labels; then balanced accuracy
    (mean recall over the present classes). Checked against that hand computation, and shown to differ from the
    naive sklearn value computed on the argmax over all columns.
    """
    rng = np.random.default_rng(300 + seed)
    c = 7
    present = np.array([0, 2, 3, 5, 6])
    labels = present[labels_with_every_class(rng, 120, len(present))]
    logits = rng.normal(scale=2.0, size=(len(labels), c))
    logits[:, [1, 4]] += 1.5  # make the absent classes win the full argmax often
    probs = softmax(logits)

    got = metrics.mean_per_class(probs, labels)
    pred_present = present[np.argmax(probs[:, present], axis=1)]
    expected = hand_balanced_accuracy(labels, pred_present)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(balanced_accuracy_score(labels, pred_present), abs=1e-12)

    pred_all = np.argmax(probs, axis=1)
    assert np.isin(pred_all, [1, 4]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = balanced_accuracy_score(labels, pred_all)
    assert got > naive + 1e-3


# ---------------------------------------------------------------------------------------------------- 11-point mAP
def test_brute_force_ap_11_reference_on_hand_example():
    """Sanity check of the reference itself: scores .9,.8,.7,.6 with positives at ranks 1 and 3.

    Points (recall, precision): (0, 1) end point, (.5, 1), (.5, 1/2), (1, 2/3), (1, 1/2).
    r = 1.0..0.6 -> 2/3 (5 points); r = 0.5..0.0 -> 1 (6 points); AP = (10/3 + 6) / 11 = 28/33.
    """
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([1, 0, 1, 0])
    assert brute_force_ap_11(scores, y) == pytest.approx(28 / 33, abs=1e-15)
    got = metrics.map_11_points(np.stack([scores, 1 - scores], axis=1), np.stack([y, 1 - y], axis=1))
    # second column: scores .1,.2,.3,.4, positives at .2 and .4 -> ranks 1 and 3 as well -> same AP
    assert got == pytest.approx(28 / 33, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(40, 3), (120, 9)])
def test_map_11_points_matches_brute_force_random(seed, shape):
    rng = np.random.default_rng(400 + seed)
    n, c = shape
    probs = random_probs(rng, n, c)
    labels = random_multilabel(rng, n, c)
    got = metrics.map_11_points(probs, labels)
    assert isinstance(got, float)
    assert got == pytest.approx(brute_force_map_11(probs, labels), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_map_11_points_with_tied_scores(seed):
    rng = np.random.default_rng(500 + seed)
    n, c = 60, 5
    scores = rng.integers(0, 4, size=(n, c)) / 4.0  # only 4 distinct values per column -> many ties
    labels = random_multilabel(rng, n, c, p=0.4)
    assert all(len(np.unique(scores[:, j])) < n / 4 for j in range(c))
    got = metrics.map_11_points(scores, labels)
    assert got == pytest.approx(brute_force_map_11(scores, labels), abs=1e-12)


def test_map_11_points_ties_hand_example():
    """All four scores tied: the only operating points are (recall 1, precision 1/2) and the (0, 1) end point.

    r = 1.0..0.1 -> 1/2 (10 points), r = 0 -> 1: AP = (5 + 1) / 11 = 6/11.
    """
    scores = np.full((4, 1), 0.5)
    y = np.array([[1], [0], [1], [0]])
    assert brute_force_ap_11(scores[:, 0], y[:, 0]) == pytest.approx(6 / 11, abs=1e-15)
    assert metrics.map_11_points(scores, y) == pytest.approx(6 / 11, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_map_11_points_drops_classes_without_positives(seed):
    rng = np.random.default_rng(600 + seed)
    n, c = 50, 6
    probs = random_probs(rng, n, c)
    labels = random_multilabel(rng, n, c)
    labels[:, [2, 5]] = 0  # classes 2 and 5: no positives

    got = metrics.map_11_points(probs, labels)
    expected = brute_force_map_11(probs, labels)
    kept = [0, 1, 3, 4]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(np.mean([brute_force_ap_11(probs[:, j], labels[:, j]) for j in kept]), abs=1e-12)
    assert got == pytest.approx(metrics.map_11_points(probs[:, kept], labels[:, kept]), abs=1e-12)
    # dropped, not averaged in as 0
    assert got != pytest.approx(expected * len(kept) / c, abs=1e-6)


def test_map_11_points_is_not_sklearn_ap_nor_classic_voc07():
    """Fixed input where the highest score is a negative: scores .9 (neg), .8 (pos), .7 (pos).

    Points: (0, 1) end point, (0, 0), (.5, 1/2), (1, 2/3).
    toolkit: r = 1.0..0.1 -> 2/3 (10 points), r = 0 -> 1 (end point counts): 23/33 ~ 0.697.
    classic VOC07 (end point not counted): 2/3 at every r -> 0.667.
    sklearn average_precision_score (step sum): .5 * 1/2 + .5 * 2/3 = 7/12 ~ 0.583.
    """
    scores = np.array([[0.9], [0.8], [0.7]])
    y = np.array([[0], [1], [1]])
    got = metrics.map_11_points(scores, y)
    assert got == pytest.approx(23 / 33, abs=1e-12)
    assert brute_force_map_11(scores, y) == pytest.approx(23 / 33, abs=1e-12)
    sk = average_precision_score(y[:, 0], scores[:, 0])
    assert sk == pytest.approx(7 / 12, abs=1e-12)
    assert got != pytest.approx(sk, abs=1e-3)
    assert got != pytest.approx(2 / 3, abs=1e-3)


def test_map_11_points_differs_from_sklearn_macro_ap_on_fixed_random_input():
    rng = np.random.default_rng(700)
    probs = random_probs(rng, 80, 5)
    labels = random_multilabel(rng, 80, 5)
    got = metrics.map_11_points(probs, labels)
    sk = average_precision_score(labels, probs, average="macro")
    assert got == pytest.approx(brute_force_map_11(probs, labels), abs=1e-12)
    assert abs(got - sk) > 1e-3


# ---------------------------------------------------------------------------------------------------- ROC AUC
@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_two_classes_scores_column_1(seed):
    rng = np.random.default_rng(800 + seed)
    labels = labels_with_every_class(rng, 150, 2)
    logits = rng.normal(size=(150, 2))
    logits[:, 1] += 0.8 * labels  # informative but imperfect
    probs = softmax(logits)

    got = metrics.roc_auc(probs, labels)
    expected = roc_auc_score(labels, probs[:, 1])
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(mann_whitney_auc(probs[:, 1], labels), abs=1e-12)
    assert 0.5 < got < 1.0

    swapped = metrics.roc_auc(probs[:, ::-1].copy(), labels)
    assert swapped == pytest.approx(1.0 - expected, abs=1e-12)


def test_roc_auc_two_classes_with_ties():
    labels = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.6, 0.6, 0.9, 0.6, 0.2])
    probs = np.stack([1 - p1, p1], axis=1)
    # pairs (pos, neg): pos scores .6, .9, .2 vs neg .2, .6, .6 -> .6: (1 + .5 + .5), .9: 3, .2: (.5 + 0 + 0) = 5.5 / 9
    assert metrics.roc_auc(probs, labels) == pytest.approx(5.5 / 9, abs=1e-12)
    assert metrics.roc_auc(probs, labels) == pytest.approx(roc_auc_score(labels, p1), abs=1e-12)
    assert metrics.roc_auc(probs[:, ::-1].copy(), labels) == pytest.approx(3.5 / 9, abs=1e-12)


def test_roc_auc_multiclass_is_macro_one_vs_rest():
    rng = np.random.default_rng(900)
    c = 4
    labels = labels_with_every_class(rng, 100, c)
    logits = rng.normal(size=(100, c))
    logits[np.arange(100), labels] += 1.0
    probs = softmax(logits)
    expected = np.mean([mann_whitney_auc(probs[:, j], labels == j) for j in range(c)])
    assert metrics.roc_auc(probs, labels) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- compute()
def test_compute_several_ids_equals_individual_functions():
    rng = np.random.default_rng(1000)
    c = 12
    labels = labels_with_every_class(rng, 90, c)
    probs = random_probs(rng, 90, c)
    ids = ["mean-per-class", "accuracy", "accuracy_top5", "roc_auc"]
    out = metrics.compute(ids, probs, labels)
    assert list(out) == ids
    assert out["accuracy"] == metrics.topk_accuracy(probs, labels, 1)
    assert out["accuracy_top5"] == metrics.topk_accuracy(probs, labels, 5)
    assert out["mean-per-class"] == metrics.mean_per_class(probs, labels)
    assert out["roc_auc"] == metrics.roc_auc(probs, labels)
    # and against the independent references
    assert out["accuracy"] == pytest.approx(numpy_topk_accuracy(probs, labels, 1), abs=1e-12)
    assert out["accuracy_top5"] == pytest.approx(numpy_topk_accuracy(probs, labels, 5), abs=1e-12)
    assert out["mean-per-class"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())
    assert set(ids) <= set(metrics.METRIC_LABELS)


def test_compute_two_class_and_multilabel():
    rng = np.random.default_rng(1001)
    labels = labels_with_every_class(rng, 40, 2)
    probs = random_probs(rng, 40, 2)
    out = metrics.compute(["roc_auc", "accuracy", "accuracy_top5"], probs, labels)
    assert out == {
        "roc_auc": pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12),
        "accuracy": pytest.approx(float(np.mean(probs.argmax(1) == labels)), abs=1e-12),
        "accuracy_top5": 1.0,
    }

    ml_probs = random_probs(rng, 40, 6)
    ml_labels = random_multilabel(rng, 40, 6)
    out = metrics.compute(["11point_mAP"], ml_probs, ml_labels)
    assert out == {"11point_mAP": metrics.map_11_points(ml_probs, ml_labels)}
    assert out["11point_mAP"] == pytest.approx(brute_force_map_11(ml_probs, ml_labels), abs=1e-12)
    assert metrics.compute([], ml_probs, ml_labels) == {}


def test_compute_unknown_metric_raises():
    probs = np.full((3, 3), 1 / 3)
    labels = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute(["accuracy", "top1"], probs, labels)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute(["mAP"], probs, labels)


MULTICLASS_FUNCS = [
    pytest.param(lambda p, y: metrics.topk_accuracy(p, y, 1), id="top1"),
    pytest.param(lambda p, y: metrics.topk_accuracy(p, y, 5), id="top5"),
    pytest.param(metrics.mean_per_class, id="mean-per-class"),
    pytest.param(metrics.roc_auc, id="roc_auc"),
    pytest.param(lambda p, y: metrics.compute(["accuracy"], p, y), id="compute"),
]


@pytest.mark.parametrize("func", MULTICLASS_FUNCS)
def test_multiclass_shape_mismatches_raise(func):
    rng = np.random.default_rng(1100)
    probs = random_probs(rng, 10, 3)
    labels = labels_with_every_class(rng, 10, 3)
    with pytest.raises(ValueError, match="predictions but"):
        func(probs, labels[:9])  # N mismatch
    with pytest.raises(ValueError, match="predictions but"):
        func(probs[:9], labels)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        func(probs[:, 0], labels)  # 1-D probabilities
    with pytest.raises(ValueError, match=r"multiclass labels must be \(N,\)"):
        func(probs, np.eye(3, dtype=np.int64)[labels])  # one-hot labels given to a multiclass metric


@pytest.mark.parametrize("func", [
    pytest.param(metrics.map_11_points, id="map"),
    pytest.param(lambda p, y: metrics.compute(["11point_mAP"], p, y), id="compute"),
])
def test_multilabel_shape_mismatches_raise(func):
    rng = np.random.default_rng(1200)
    probs = random_probs(rng, 10, 4)
    labels = random_multilabel(rng, 10, 4)
    with pytest.raises(ValueError, match="predictions but"):
        func(probs, labels[:9])
    with pytest.raises(ValueError, match="multilabel labels must be"):
        func(probs, labels[:, :3])  # C mismatch
    with pytest.raises(ValueError, match="multilabel labels must be"):
        func(probs, labels.argmax(1))  # (N,) labels given to the multilabel metric
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        func(probs[:, 0], labels[:, 0])


def test_out_of_range_or_float_labels_raise_value_error():
    probs = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        metrics.compute(["accuracy"], probs, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        metrics.mean_per_class(probs, np.array([-1, 1, 2]))
    with pytest.raises(ValueError, match="must be integers"):
        metrics.mean_per_class(probs, np.array([0.0, 1.0, 2.0]))


def test_agreement_of_two_runs_against_a_hand_count():
    from harness.engine.metrics import agreement

    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    b = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.5, 0.45, 0.05]])
    out = agreement(a, b)
    assert out["agreement"] == pytest.approx(75.0)  # rows 0, 2, 3 agree on the top-1 class, row 1 does not
    assert out["max_abs_dprob"] == pytest.approx(0.4)  # row 1, column 0
    assert agreement(a, b, multilabel=True)["agreement"] is None
    assert agreement(a, b[:3]) == {"agreement": None, "max_abs_dprob": None}
