"""Relevance maps: where in the image a tag's score comes from (README "Relevance maps").

The explain graph gives, per image, the G vectors, `positions` [G, P, D] (each grid position's
features through the head's path with the pooled pass's group attention and normalisation
held fixed) and `evidence` [G, D] (the ImageNet-evidence term, no position). A tag's map is
the score each position would give it through its best group g*: ⟨positions[g*, p], w⟩, and
its evidence share ⟨evidence[g*], w⟩.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Relevance:
    """One tag's map: `values` [rows·cols] row-major from the top-left, in score units."""

    rows: int
    cols: int
    values: np.ndarray
    evidence: float
    png: bytes | None = None


def grid_of(positions: np.ndarray) -> tuple[int, int]:
    """(rows, cols) of a square grid of positions[..., P, D]."""
    count = positions.shape[-2]
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} positions do not form a square grid")
    return side, side


def relevance(groups: np.ndarray, positions: np.ndarray, evidence: np.ndarray,
              label: np.ndarray, png: bool = False) -> Relevance:
    """groups [G, D], positions [G, P, D], evidence [G, D] and a label vector [D] → its map."""
    best = int(np.argmax(groups @ label))  # the group that gives the tag its score
    values = (positions[best] @ label).astype(np.float32)  # [P]
    rows, cols = grid_of(positions)
    return Relevance(rows, cols, values, float(evidence[best] @ label),
                     grey_png(values, rows, cols) if png else None)


def grey_png(values: np.ndarray, rows: int, cols: int) -> bytes:
    """A rows×cols greyscale PNG of a map, its minimum black and its maximum white."""
    from PIL import Image

    low, span = float(values.min()), float(np.ptp(values))
    scaled = (values - low) / span if span > 0 else np.zeros_like(values)
    pixels = np.round(scaled * 255).astype(np.uint8).reshape(rows, cols)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
