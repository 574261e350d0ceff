"""Evaluation protocol (method.md §4): per-label AP / mAP, F1@K, ZSL and GZSL.

Numpy only. `targets` are [N, L] with 1 = positive; 0 and -1 count as negative by default
(`unknown="ignore"` drops -1 entries from a label's ranking instead). Rules are parameters:
- `no_positive`: a label without a positive image is "skip"ped (not in the mean) or counts as
  AP "zero" (the NUS-WIDE convention);
- `include`: "all" test images, or only those with ≥ 1 "positive" of the evaluated label set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per column, equal to sklearn's `average_precision_score` (ties are
    one threshold). scores, targets [N] or [N, L] (targets bool / 0-1). NaN where a column has
    no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    squeeze = scores.ndim == 1
    if squeeze:
        scores, targets = scores[:, None], targets[:, None]
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, 0)  # [N, L] descending
    t = np.take_along_axis(targets, order, 0).astype(np.float64)
    tp = np.cumsum(t, axis=0)
    # a tie group's precision is the one at its last row; find each row's group end
    last = np.ones_like(s, dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    rank = np.arange(n)[:, None]
    end = np.where(last, rank, n)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]  # next group end at or below each row
    precision_at_end = np.take_along_axis(tp, end, 0) / (end + 1)
    n_pos = t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (t * precision_at_end).sum(0) / n_pos
    ap = np.where(n_pos > 0, ap, np.nan)
    return ap[0] if squeeze else ap


class ResampledAP:
    """Per-label AP of one score matrix [N, L] over resamples of its rows, sorted once.

    A resample is given as row weights [N] (how often each row was drawn; 0 = left out):
    `ap(weights)` equals `average_precision` on the resampled rows (copies of a row tie with
    each other, and ties are one threshold, so a row's copies count at its tie group's end),
    at a few array passes per resample instead of a sort — what makes a bootstrap over
    thousands of labels affordable.
    """

    def __init__(self, scores: np.ndarray, targets: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        n = scores.shape[0]
        self.order = np.argsort(-scores, axis=0, kind="stable").astype(np.int32)  # [N, L]
        ranked = np.take_along_axis(scores, self.order, 0)
        self.positive = np.take_along_axis(np.asarray(targets) == 1, self.order, 0)
        last = np.ones_like(ranked, dtype=bool)  # the last row of each tie group
        last[:-1] = ranked[1:] != ranked[:-1]
        end = np.where(last, np.arange(n)[:, None], n)
        self.end = np.minimum.accumulate(end[::-1], axis=0)[::-1].astype(np.int32)  # [N, L]

    def ap(self, weights: np.ndarray) -> np.ndarray:
        """AP per label [L] of the resample with row `weights` [N] (NaN: no positive)."""
        # float32: counts and their running sums are exact integers far beyond any test set
        w = np.asarray(weights, dtype=np.float32)[self.order]  # [N, L]
        hits = w * self.positive
        drawn_at_end = np.take_along_axis(np.cumsum(w, 0), self.end, 0)
        hits_at_end = np.take_along_axis(np.cumsum(hits, 0), self.end, 0)
        precision = np.divide(hits_at_end, drawn_at_end, out=np.zeros_like(hits_at_end),
                              where=drawn_at_end > 0)
        n_pos = hits.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_pos > 0, (hits * precision).sum(0, dtype=np.float64) / n_pos,
                            np.nan)


def _select(scores: np.ndarray, targets: np.ndarray, label_subset: Sequence[int] | np.ndarray
            | None, include: str) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores), np.asarray(targets)
    if label_subset is not None:
        cols = np.asarray(label_subset)
        cols = np.flatnonzero(cols) if cols.dtype == bool else cols
        scores, targets = scores[:, cols], targets[:, cols]
    if include == "positive":
        rows = (targets == 1).any(1)
        scores, targets = scores[rows], targets[rows]
    elif include != "all":
        raise ValueError(f"include must be 'all' or 'positive', not {include!r}")
    return scores, targets


def per_label_ap(scores: np.ndarray, targets: np.ndarray, unknown: str = "negative"
                 ) -> np.ndarray:
    """AP per label [L] (NaN for labels without a positive)."""
    scores = np.asarray(scores, dtype=np.float64)
    if unknown == "ignore":
        # an ignored entry drops to the bottom as a negative: it ranks after every real score,
        # so it cannot change any precision measured at a positive
        scores = np.where(np.asarray(targets) == -1, -np.inf, scores)
    elif unknown != "negative":
        raise ValueError(f"unknown must be 'negative' or 'ignore', not {unknown!r}")
    return average_precision(scores, np.asarray(targets) == 1)


def mean_average_precision(
    scores: np.ndarray,
    targets: np.ndarray,
    label_subset: Sequence[int] | np.ndarray | None = None,
    include: str = "all",
    no_positive: str = "skip",
    unknown: str = "negative",
) -> float:
    """Mean over labels of per-label AP. scores, targets [N, L]; `label_subset` indices or bool."""
    scores, targets = _select(scores, targets, label_subset, include)
    ap = per_label_ap(scores, targets, unknown)
    if no_positive == "zero":
        ap = np.nan_to_num(ap, nan=0.0)
    elif no_positive != "skip":
        raise ValueError(f"no_positive must be 'skip' or 'zero', not {no_positive!r}")
    return mean_over_labels(ap)


def mean_over_labels(ap: np.ndarray) -> float:
    """The mean of per-label APs, labels without a positive (NaN) skipped; NaN if none has."""
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if len(ap) else float("nan")


def precision_recall_f1_at_k(
    scores: np.ndarray,
    targets: np.ndarray,
    k: int,
    label_subset: Sequence[int] | np.ndarray | None = None,
    include: str = "all",
) -> tuple[float, float, float]:
    """Micro P/R/F1 of the top-K labels per image: P = ΣTP/(N·K), R = ΣTP/Σpositives.

    K is capped at the number of labels (ZSL on VOC has 4 unseen labels and K = 5). Ties at
    the K-th place are broken by label order (stable sort).
    """
    scores, targets = _select(scores, targets, label_subset, include)
    n, num_labels = scores.shape
    k = min(k, num_labels)
    if n == 0 or k == 0:
        return 0.0, 0.0, 0.0
    top = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :k]
    positive = np.asarray(targets) == 1
    tp = float(np.take_along_axis(positive, top, 1).sum())
    precision = tp / (n * k)
    total = float(positive.sum())
    recall = tp / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1_at_k(scores: np.ndarray, targets: np.ndarray, k: int,
            label_subset: Sequence[int] | np.ndarray | None = None, include: str = "all") -> float:
    return precision_recall_f1_at_k(scores, targets, k, label_subset, include)[2]


def evaluate_zsl_gzsl(
    scores: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    seen_mask: np.ndarray,
    include: str = "all",
    no_positive: str = "skip",
    unknown: str = "negative",
    ks: Sequence[int] = (3, 5),
) -> dict:
    """ZSL (rank the unseen labels only) and GZSL (seen + unseen) metrics.

    Returns {"zsl": {...}, "gzsl": {...}, "rules": {...}}; each setting holds `map`, `f1_<k>`,
    `precision_<k>`, `recall_<k>`, `images`, `labels`, `labels_with_positives`, and
    `per_label_ap` {name: AP or None}.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    seen_mask = np.asarray(seen_mask, dtype=bool)
    if scores.shape != targets.shape or not scores.shape[1] == len(label_names) == len(seen_mask):
        raise ValueError(f"shapes disagree: scores {scores.shape}, targets {targets.shape}, "
                         f"{len(label_names)} names, {len(seen_mask)} seen flags")
    out: dict = {"rules": {"include": include, "no_positive": no_positive, "unknown": unknown}}
    for setting, cols in (("zsl", np.flatnonzero(~seen_mask)),
                          ("gzsl", np.arange(len(label_names)))):
        s, t = _select(scores, targets, cols, include)
        ap = per_label_ap(s, t, unknown)
        result = {
            "map": mean_average_precision(s, t, no_positive=no_positive, unknown=unknown),
            "images": int(len(s)),
            "labels": int(len(cols)),
            "labels_with_positives": int((~np.isnan(ap)).sum()),
        }
        for k in ks:
            p, r, f = precision_recall_f1_at_k(s, t, k)
            result.update({f"f1_{k}": f, f"precision_{k}": p, f"recall_{k}": r})
        result["per_label_ap"] = {label_names[c]: (None if np.isnan(a) else float(a))
                                  for c, a in zip(cols, ap, strict=True)}
        out[setting] = result
    return out


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray,
                               bins: int = 10) -> float:
    """ECE over equal-width probability bins: Σ_b |B|/N · |mean p_B − positive rate_B|.
    Entries with target −1 (unknown) are left out."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(targets).ravel()
    p, y = p[y >= 0], (y[y >= 0] == 1).astype(np.float64)
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        member = which == b
        if member.any():
            total += member.sum() * abs(p[member].mean() - y[member].mean())
    return total / p.size


def probability_quality(probabilities: np.ndarray, targets: np.ndarray, seen_mask: np.ndarray,
                        cut: float = 0.5) -> dict:
    """How usable calibrated probabilities are, for the seen and the unseen labels apart:
    micro F1 of `p ≥ cut` over every (image, label) pair, the mean probability of a true
    label, ECE (10 bins). probabilities, targets [N, L]; seen_mask [L]."""
    seen_mask = np.asarray(seen_mask, dtype=bool)
    out = {}
    for group, cols in (("seen", seen_mask), ("unseen", ~seen_mask)):
        p, t = np.asarray(probabilities)[:, cols], np.asarray(targets)[:, cols]
        known = t >= 0
        predicted, positive = (p >= cut) & known, (t == 1)
        tp = float((predicted & positive).sum())
        precision = tp / predicted.sum() if predicted.sum() else 0.0
        recall = tp / positive.sum() if positive.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[group] = {"labels": int(cols.sum()), "pairs": int(known.sum()),
                      "positives": int(positive.sum()), f"f1_at_{cut:g}": f1,
                      "precision": precision, "recall": recall,
                      "mean_p_true": float(p[positive].mean()) if positive.any() else None,
                      "ece": expected_calibration_error(p, t)}
    return out
