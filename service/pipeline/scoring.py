"""Scoring: `score = max_g <v_g, w>`, ranking, top-k, threshold, calibrated probability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tag:
    label: str
    score: float
    rank: int
    probability: float | None = None


def score(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """groups [B,G,D] x labels [L,D] -> [B,L]: best dot product over the G vectors.

    Each label's score is independent of the others (no softmax over the candidates).
    """
    return np.matmul(groups, labels.T).max(axis=1)


def rank(scores: np.ndarray, labels: list[str], *, top_k: int | None = None,
         threshold: float | None = None, probabilities: np.ndarray | None = None) -> list[Tag]:
    """One image's scores [L] -> tags sorted by score (rank 1 = best).

    `probabilities` [L] are the calibrated ones (None when the model has no calibration).
    `top_k` keeps the best k; `threshold` then keeps tags whose probability (or raw score
    without one) is at least the threshold. Ranks are positions in the full ranking.
    """
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    values = scores[order].astype(np.float64)
    probs = probabilities[order].astype(np.float64) if probabilities is not None else None
    keep = np.ones(len(order), bool)
    if threshold is not None:
        keep = (probs if probs is not None else values) >= threshold
    return [
        Tag(labels[order[i]], float(values[i]), int(i) + 1,
            float(probs[i]) if probs is not None else None)
        for i in np.flatnonzero(keep)
    ]
