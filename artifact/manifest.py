"""`manifest.json`: the schema of an artifact's description, written by `models.export` and
read by the server. Every field the exporter writes is declared here; sections also accept
extra keys, so an older server can read a newer exporter's manifest.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifact.imaging import Preprocessing

FORMAT = "ml2p-artifact/1"


class _Open(BaseModel):
    """Manifest sections tolerate extra keys (newer exporters may add fields)."""

    model_config = ConfigDict(extra="allow")


class PreprocessingSpec(_Open):
    size: int = Field(gt=0)
    resize: str = "squash-bilinear"
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    color: str = "RGB"
    layout: str = "NCHW"
    scale: str = "pixel / 255"

    @classmethod
    def of(cls, preprocessing: Preprocessing) -> PreprocessingSpec:
        return cls(size=preprocessing.size, resize=preprocessing.resize,
                   mean=list(preprocessing.mean), std=list(preprocessing.std),
                   color=preprocessing.color)

    def build(self) -> Preprocessing:
        """The preprocessing this section describes (ValueError for an unknown rule)."""
        if self.resize != "squash-bilinear":
            raise ValueError(f"unsupported resize rule {self.resize!r}")
        return Preprocessing(size=self.size, mean=(self.mean[0], self.mean[1], self.mean[2]),
                             std=(self.std[0], self.std[1], self.std[2]))


class LabelEmbedderSpec(_Open):
    kind: str
    model_id: str
    embed_dim: int | None = Field(None, description="the embedder's own width, before projection")
    max_tokens: int = Field(gt=1, description="token limit incl. special tokens; longer -> 422")
    pooling: str | None = None
    label_transform: str | None = None


class ArtifactFiles(_Open):
    visual: str = "visual.onnx"
    text: str = "text.onnx"
    tokenizer: str = "tokenizer.json"
    checkpoint: str | None = Field(None, description="the torch checkpoint (torch engine)")


class GraphPorts(_Open):
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]


class GraphIO(_Open):
    visual: GraphPorts
    text: GraphPorts
    opset: int


class GflopsSpec(_Open):
    image: float = Field(ge=0, description="GFLOPs of one image through visual.onnx")
    label: float = Field(ge=0, description="GFLOPs of one label through text.onnx")
    label_tokens: int = Field(0, ge=0, description="token length `label` was counted at")
    label_tokens_rule: str | None = None
    image_elementwise: float | None = None
    label_elementwise: float | None = None
    scoring_per_label_per_image: float | None = None
    convention: str | None = None


class Calibration(_Open):
    """Score → probability. `logistic`: p = sigmoid(a·s + b), one curve for every label.
    `logistic-novelty`: p = sigmoid(a·s + b + (c + d·s)·u), where u is the label's novelty
    (`label_novelty`: 1 − its best cosine to the vectors of `reference_labels`, the labels the
    model trained on), so labels far from training get their own curve: unseen labels score
    lower for the same evidence (the generalised-zero-shot bias)."""

    kind: Literal["logistic", "logistic-novelty"] = "logistic"
    a: float
    b: float
    c: float = Field(0.0, description="novelty offset (logistic-novelty)")
    d: float = Field(0.0, description="novelty × score slope (logistic-novelty)")
    reference_labels: list[str] = Field(
        default_factory=list, description="the labels trained on (logistic-novelty): novelty "
                                          "is measured against their text-graph vectors")
    n: int | None = Field(None, description="validation (score, target) pairs fitted on")
    positives: int | None = None
    nll: float | None = None
    score_only: dict[str, float] | None = Field(
        None, description="the one-curve fit {a, b} on the same data, kept for comparison")

    @property
    def uses_novelty(self) -> bool:
        return self.kind == "logistic-novelty"

    def probabilities(self, scores: np.ndarray, novelty: np.ndarray | None = None) -> np.ndarray:
        """Elementwise probabilities of `scores`; `novelty` (broadcastable to them, one value
        per label) is required by `logistic-novelty`."""
        s = np.asarray(scores, np.float64)
        z = self.a * s + self.b
        if self.uses_novelty:
            if novelty is None:
                raise ValueError("a logistic-novelty calibration needs each label's novelty")
            z = z + (self.c + self.d * s) * np.asarray(novelty, np.float64)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free sigmoid


def label_novelty(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """labels [L, D], reference [R, D] (unit vectors) → [L]: 1 − best cosine to a reference
    label (0 for a label trained on, larger the further from every one)."""
    if len(reference) == 0:
        return np.ones(len(labels))
    best = (np.asarray(labels, np.float64) @ np.asarray(reference, np.float64).T).max(axis=1)
    return np.clip(1.0 - best, 0.0, 2.0)


class VariantAgreement(_Open):
    top5_identical: float
    top5_overlap: float
    max_abs_diff_groups: float
    images: int
    labels: int
    reference: str


class VariantGate(_Open):
    """Whether a variant may be served by `precision=auto` (see `VariantAccuracy`)."""

    passed: bool
    rule: str
    failed: list[str] = Field(default_factory=list)


class VariantAccuracy(_Open):
    """A variant's accuracy on the test split (VOC images/val), measured by `ml2p eval
    --variants` on the very file (`sha256`), with its paired change against fp32."""

    dataset: str
    images: int
    zsl_map: float
    gzsl_map: float
    zsl_change: float
    gzsl_change: float
    zsl_change_ci95: list[float]
    gzsl_change_ci95: list[float]
    top5_identical: float
    sha256: str
    gate: VariantGate


class Variant(_Open):
    """A precision variant of the visual graph and how far it is from fp32."""

    file: str
    precision: str
    agreement: VariantAgreement | None = None
    accuracy: VariantAccuracy | None = None
    speed_cpu_1_thread: dict[str, Any] | None = None


class ExplainSpec(_Open):
    """The optional relevance-map graphs: per precision variant a second visual graph,
    `image` -> `groups` [N,G,D], `positions` [N,G,rows·cols,D], `evidence` [N,G,D] (README
    "Relevance maps"); an artifact without them answers `explain` with 422."""

    files: dict[str, str] = Field(description="precision variant (fp32, fp16, int8) -> file")
    rows: int = Field(gt=0, description="grid rows of a map")
    cols: int = Field(gt=0, description="grid columns of a map")
    gflops_image: float = Field(ge=0, description="GFLOPs of one image through the fp32 graph")
    gflops_per_map: float = Field(ge=0, description="GFLOPs of one tag's map from its outputs")
    definition: str = ""


class Manifest(_Open):
    """`manifest.json` of an artifact."""

    format: str = FORMAT
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str = ""
    backbone: str
    head: str | None = None
    input_size: int | None = None
    preprocessing: PreprocessingSpec
    groups: int = Field(gt=0, description="G, principal vectors per image")
    dim: int = Field(gt=0, description="D, label-embedding dimension")
    label_embedder: LabelEmbedderSpec
    files: ArtifactFiles = Field(default_factory=ArtifactFiles)
    io: GraphIO | None = None
    gflops: GflopsSpec
    calibration: Calibration | None = None
    accuracy: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, Variant] | None = None
    explain: ExplainSpec | None = None
    export_seconds: float | None = None
    export_graph_seconds: float | None = None

    def to_json(self) -> str:
        """The file's text: every field, in declaration order."""
        import json

        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"
