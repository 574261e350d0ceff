"""Metrics against hand-computed cases and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from models.metrics import (
    ResampledAP,
    average_precision,
    evaluate_zsl_gzsl,
    expected_calibration_error,
    f1_at_k,
    mean_average_precision,
    precision_recall_f1_at_k,
    probability_quality,
)


def test_ap_hand_computed():
    # ranking: + - + -  → (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == \
        pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative at the top: one threshold, precision 1/2
    assert average_precision(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_ap_equals_sklearn_random_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        scores = np.round(rng.random((n, 6)), 1)  # many ties
        targets = (rng.random((n, 6)) < 0.3).astype(int)
        targets[0] = 1
        ours = average_precision(scores, targets)
        ref = [average_precision_score(targets[:, j], scores[:, j]) for j in range(6)]
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_resampled_ap_equals_ap_on_the_resampled_rows():
    """The bootstrap's one-sort AP: a resample given as row counts scores exactly as the
    resampled rows themselves (ties, repeated rows, rows left out, labels left without a
    positive)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 50))
        scores = np.round(rng.random((n, 7)), 1)  # many ties
        targets = (rng.random((n, 7)) < 0.2).astype(np.int8)
        ranker = ResampledAP(scores, targets)
        for _ in range(5):
            index = rng.integers(0, n, n)
            ours = ranker.ap(np.bincount(index, minlength=n))
            np.testing.assert_allclose(ours, average_precision(scores[index], targets[index]),
                                       rtol=1e-6, equal_nan=True)
        kept = rng.random(n) < 0.5  # weights 0: rows outside an inclusion rule
        np.testing.assert_allclose(ranker.ap(kept.astype(int)),
                                   average_precision(scores[kept], targets[kept]),
                                   rtol=1e-6, equal_nan=True)


def test_map_rules():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.7, 0.6]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0]], dtype=np.int8)
    # label 2 has no positive: skipped, or AP 0 (NUS-WIDE)
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)
    assert mean_average_precision(scores, targets, no_positive="zero") == pytest.approx(2 / 3)
    # label 0: positive first anyway; label 1: image 2 (0.7) ranks below image 1 (0.8)
    assert mean_average_precision(scores, targets, label_subset=[1]) == pytest.approx(1.0)
    # inclusion: only images with a positive in the subset {0}
    assert mean_average_precision(scores, targets, [0], include="positive") == 1.0
    # unknown handling: with -1 as negative vs ignored
    s = np.array([[0.9], [0.5], [0.1]])
    t = np.array([[-1], [1], [0]], dtype=np.int8)
    assert mean_average_precision(s, t) == pytest.approx(0.5)
    assert mean_average_precision(s, t, unknown="ignore") == pytest.approx(1.0)


def test_f1_at_k_hand_computed():
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.9]])
    targets = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    # top-2: image 0 → {0,1}: 1 TP; image 1 → {3,2}: 1 TP.  P = 2/4, R = 2/3
    p, r, f = precision_recall_f1_at_k(scores, targets, 2)
    assert (p, r) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert f == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # K above the label count is capped
    assert f1_at_k(scores[:, :2], targets[:, :2], 5) == pytest.approx(
        f1_at_k(scores[:, :2], targets[:, :2], 2))


def test_evaluate_zsl_gzsl():
    rng = np.random.default_rng(1)
    scores = rng.random((30, 8))
    targets = (rng.random((30, 8)) < 0.3).astype(np.int8)
    seen = np.array([True] * 5 + [False] * 3)
    names = [f"l{i}" for i in range(8)]
    out = evaluate_zsl_gzsl(scores, targets, names, seen)
    assert out["zsl"]["labels"] == 3 and out["gzsl"]["labels"] == 8
    assert out["zsl"]["map"] == pytest.approx(np.mean(
        [average_precision_score(targets[:, j], scores[:, j]) for j in (5, 6, 7)]))
    assert out["gzsl"]["f1_3"] == pytest.approx(f1_at_k(scores, targets, 3))
    assert out["zsl"]["f1_5"] == pytest.approx(f1_at_k(scores[:, 5:], targets[:, 5:], 5))
    assert set(out["zsl"]["per_label_ap"]) == {"l5", "l6", "l7"}
    pos_only = evaluate_zsl_gzsl(scores, targets, names, seen, include="positive")
    assert pos_only["zsl"]["images"] == int((targets[:, 5:] == 1).any(1).sum())


def test_calibration_error_and_probability_quality_hand_computed():
    # bin [0.2, 0.3): p 0.2, 0.2 with one positive → |0.2 − 0.5| · 2/4; bin [0.9, 1]: p 0.9,
    # 1.0 both positive → |0.95 − 1| · 2/4; the unknown entry is left out
    p = np.array([0.2, 0.2, 0.9, 1.0, 0.7])
    y = np.array([1, 0, 1, 1, -1])
    assert expected_calibration_error(p, y) == pytest.approx(0.3 * 0.5 + 0.05 * 0.5)
    probs = np.array([[0.9, 0.6], [0.2, 0.4], [0.7, 0.1]])
    targets = np.array([[1, 1], [1, 0], [0, 0]])
    q = probability_quality(probs, targets, seen_mask=np.array([True, False]))
    # seen: predicted {0, 2}, positives {0, 1} → P = R = 1/2; unseen: predicted {0} = positive
    assert q["seen"]["f1_at_0.5"] == pytest.approx(0.5)
    assert q["unseen"]["f1_at_0.5"] == pytest.approx(1.0)
    assert q["seen"]["mean_p_true"] == pytest.approx(0.55)
    assert q["unseen"]["labels"] == 1 and q["unseen"]["positives"] == 1
