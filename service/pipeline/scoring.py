"""Scoring: `score = max_g <v_g, w>`, ranking, top-k, cut-offs, calibrated probability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.manifest import Calibration
from service.pipeline.explain import Relevance


@dataclass(frozen=True)
class Tag:
    label: str
    score: float
    rank: int
    probability: float | None = None
    relevance: Relevance | None = None  # asked for with explain


def score(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """groups [B,G,D] x labels [L,D] -> [B,L]: best dot product over the G vectors.

    Each label's score is independent of the others (no softmax over the candidates).
    """
    return np.matmul(groups, labels.T).max(axis=1)


def rank(scores: np.ndarray, labels: list[str], *, top_k: int | None = None,
         min_score: float | None = None, min_probability: float | None = None,
         calibration: Calibration | None = None, novelty: np.ndarray | None = None
         ) -> list[Tag]:
    """One image's scores [L] -> tags sorted by score (rank 1 = best).

    `top_k` keeps the best k; then `min_score` keeps tags whose raw score, `min_probability`
    those whose calibrated probability, is at least that. Probabilities are computed for the
    kept tags only, from `calibration` (None: the model has none) and each label's `novelty`
    [L] where the calibration reads it. Ranks are positions in the full ranking.
    """
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    values = scores[order].astype(np.float64)
    probs = (calibration.probabilities(values, None if novelty is None else novelty[order])
             if calibration is not None else None)
    keep = np.ones(len(order), bool)
    if min_score is not None:
        keep &= values >= min_score
    if min_probability is not None:
        if probs is None:
            raise ValueError("min_probability needs probabilities (a calibrated model)")
        keep &= probs >= min_probability
    return [
        Tag(labels[order[i]], float(values[i]), int(i) + 1,
            float(probs[i]) if probs is not None else None)
        for i in np.flatnonzero(keep)
    ]
