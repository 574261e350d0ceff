"""Typed results: the same objects whichever protocol answered."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field


class RelevanceMap(BaseModel):
    """Where in the image a tag's score comes from: `values` (rows·cols, row-major from the
    top-left) are the score each grid position would give it, `evidence` the share of the
    score with no position (the server's README, "Relevance maps")."""

    rows: int
    cols: int
    values: list[float]
    evidence: float
    png: bytes | None = Field(None, description="a rows×cols greyscale PNG (explain_png)")

    def array(self) -> Any:  # numpy.ndarray
        """The map as a numpy array [rows, cols] (needs numpy)."""
        import numpy as np

        return np.asarray(self.values, np.float32).reshape(self.rows, self.cols)


class Tag(BaseModel):
    label: str = Field(description="the label exactly as sent")
    score: float = Field(description="the model's raw score")
    probability: float | None = Field(None, description="calibrated, when the model has it")
    rank: int
    relevance: RelevanceMap | None = Field(None, description="its map (explain=True)")


class LabelWarning(BaseModel):
    label: str
    code: str  # e.g. "unknown_tokens"
    message: str


class TagResult(BaseModel):
    """One image's ranked tags, and what the request cost."""

    tags: list[Tag]
    model: str = Field(description="name@version")
    duplicates_removed: list[str] = Field(default_factory=list)
    warnings: list[LabelWarning] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    gflops: dict[str, float] = Field(default_factory=dict)
    source: str | None = Field(None, description="the image's path, when given as one")

    def top(self, k: int = 5) -> list[str]:
        return [t.label for t in self.tags[:k]]


class VectorsModel(BaseModel):
    """Whose vectors these are; `score` refuses vectors of another model/version/variant."""

    name: str
    version: str
    precision: str


class Embedding(BaseModel):
    """One image's G×D vectors: little-endian `data` of `dtype`, row-major."""

    shape: tuple[int, int]
    dtype: Literal["float16", "float32"]
    data: bytes
    source: str | None = None

    def array(self) -> Any:  # numpy.ndarray
        """The vectors as a numpy array [G, D] (needs numpy: pip install ml2p-client[arrays])."""
        import numpy as np

        return np.frombuffer(self.data, "<f2" if self.dtype == "float16" else "<f4"
                             ).reshape(self.shape)

    def wire(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype,
                "data": base64.b64encode(self.data).decode()}


class Embeddings(BaseModel):
    model: VectorsModel
    items: list[Embedding]


class Vocabulary(BaseModel):
    name: str
    labels: list[str]
    builtin: bool = False
    created: str = ""
    duplicates_removed: list[str] = Field(default_factory=list)


class ModelInfo(BaseModel):
    name: str
    version: str
    engine: str
    groups: int
    dim: int
    calibrated: bool
    state: str
    details: dict[str, Any] = Field(default_factory=dict, description="the full description")
