"""Pydantic models of every REST request and response (they are the OpenAPI schema)."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pipeline import TagOutcome
from service.pipeline.explain import Relevance
from service.pipeline.scoring import Tag
from service.results import BatchTimings, Gflops, ImageTimings, ModelRef, Timings, VectorsRef


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `invalid_image`")
    message: str = Field(description="what went wrong, for humans")
    field: str | None = Field(None, description="the request field at fault, if any")


class ErrorBody(BaseModel):
    """Every error response, whatever the status."""

    error: ErrorDetail


class TagParams(BaseModel):
    """Label source and options shared by all tagging requests."""

    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = Field(
        None, description="candidate labels (any English words or phrases)")
    vocabulary: str | None = Field(
        None, description="name of a stored vocabulary, instead of `labels`")
    top_k: int | None = Field(None, ge=1, description="keep the best k (default: all, ranked)")
    min_probability: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False,
        description="keep tags whose calibrated probability >= this (0-1; 422 for a model "
                    "without calibration)")
    min_score: float | None = Field(
        None, allow_inf_nan=False, description="keep tags whose raw score >= this")
    threshold: float | None = Field(
        None, allow_inf_nan=False, json_schema_extra={"deprecated": True},  # documented only:
        # pydantic's deprecated=True would warn on every read by the server itself
        description="deprecated name of min_probability (of min_score for a model without "
                    "calibration); checked the same way")
    timeout_ms: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="deadline for this request (capped by the server's)")
    explain: bool = Field(False, description="add a relevance map to each of the first "
                                             "`explain_top_k` tags (422 `explain_unavailable` "
                                             "for a model exported without maps)")
    explain_top_k: int = Field(5, ge=1, description="maps for this many tags of the answer, "
                                                    "at most the server's explain_max_maps "
                                                    "per request (422)")
    explain_png: bool = Field(False, description="each map also as a grid-sized greyscale PNG")


class TagJSONRequest(TagParams):
    """`POST /v1/tag` as JSON."""

    image: str = Field(description="the image file, base64 (a `data:` URL prefix is allowed)")


class BatchJSONRequest(TagParams):
    """`POST /v1/tag/batch` as JSON: several images, one label list."""

    images: list[str] = Field(min_length=1, description="image files, base64")


class RelevanceMap(BaseModel):
    """Where in the image a tag's score comes from (README "Relevance maps")."""

    rows: int = Field(description="grid rows")
    cols: int = Field(description="grid columns")
    values: list[float] = Field(description="rows·cols values, row-major from the top-left: "
                                            "the score each grid position would give the tag, "
                                            "in the units of `score`, without `evidence`")
    evidence: float = Field(description="the ImageNet-evidence term's share of the score "
                                        "(it has no position)")
    png: str | None = Field(None, description="base64 of a rows×cols greyscale PNG of the map "
                                              "(explain_png), its minimum black")

    @classmethod
    def of(cls, relevance: Relevance) -> RelevanceMap:
        return cls.model_construct(
            rows=relevance.rows, cols=relevance.cols, values=relevance.values.tolist(),
            evidence=relevance.evidence,
            png=None if relevance.png is None else base64.b64encode(relevance.png).decode())


class TagOut(BaseModel):
    label: str = Field(description="the caller's label text exactly as sent")
    score: float = Field(description="max over the G principal vectors of <v_g, w_label>")
    probability: float | None = Field(None, description="calibrated probability, if available")
    rank: int = Field(ge=1, description="position in the ranking of all candidate labels")
    relevance: RelevanceMap | None = Field(None, description="its map, with explain (the first "
                                                             "explain_top_k tags)")

    @classmethod
    def of(cls, tag: Tag) -> TagOut:
        # built from the pipeline's typed values: no validation (a re-score can return 10⁵ tags)
        return cls.model_construct(
            label=tag.label, score=tag.score, probability=tag.probability, rank=tag.rank,
            relevance=None if tag.relevance is None else RelevanceMap.of(tag.relevance))


class LabelWarningOut(BaseModel):
    label: str = Field(description="the caller's label text")
    code: str = Field(description="e.g. `unknown_tokens`: the text model reads none of it")
    message: str


def _warnings(outcome: TagOutcome) -> list[LabelWarningOut]:
    return [LabelWarningOut(label=w.label, code=w.code, message=w.message)
            for w in outcome.warnings]


class TagResponse(BaseModel):
    request_id: str
    model: ModelRef
    tags: list[TagOut]
    batch_size: int = Field(description="images in the inference batch this image ran in")
    timings_ms: Timings
    gflops: Gflops
    duplicates_removed: list[str] = Field(
        default_factory=list, description="labels dropped as duplicates of an earlier label")
    warnings: list[LabelWarningOut] = Field(
        default_factory=list, description="labels answered, but not as one may expect")

    @classmethod
    def of(cls, outcome: TagOutcome, request_id: str) -> TagResponse:
        result = outcome.results[0]
        return cls(
            request_id=request_id, model=outcome.model,
            tags=[TagOut.of(t) for t in result.tags], batch_size=result.batch_size,
            timings_ms=outcome.timings(0), gflops=outcome.gflops(),
            duplicates_removed=outcome.duplicates_removed, warnings=_warnings(outcome))


class ImageTags(BaseModel):
    index: int
    tags: list[TagOut]
    batch_size: int
    timings_ms: ImageTimings


class BatchTagResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageTags]
    timings_ms: BatchTimings
    gflops: Gflops
    duplicates_removed: list[str] = Field(default_factory=list)
    warnings: list[LabelWarningOut] = Field(default_factory=list)

    @classmethod
    def of(cls, outcome: TagOutcome, request_id: str) -> BatchTagResponse:
        return cls(
            request_id=request_id, model=outcome.model,
            results=[ImageTags(index=i, tags=[TagOut.of(t) for t in r.tags],
                               batch_size=r.batch_size, timings_ms=r.timings_ms)
                     for i, r in enumerate(outcome.results)],
            timings_ms=outcome.batch_timings(), gflops=outcome.gflops(),
            duplicates_removed=outcome.duplicates_removed, warnings=_warnings(outcome))


class EmbedParams(BaseModel):
    """Options of `POST /v1/embed`."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float16", "float32"] = Field(
        "float16", description="element type of the returned vectors (little-endian)")
    timeout_ms: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="deadline for this request (capped by the server's)")


class EmbedJSONRequest(EmbedParams):
    """`POST /v1/embed` as JSON."""

    images: list[str] = Field(min_length=1, description="image files, base64")


class Embedding(BaseModel):
    """One image's G×D vectors: shape, element type and base64 of the little-endian array."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(min_length=2, max_length=2, description="[G, D]")
    dtype: Literal["float16", "float32"]
    data: str = Field(description="base64 of the little-endian array, row-major")


class EmbeddingOut(Embedding):
    index: int
    batch_size: int
    timings_ms: ImageTimings


class EmbedResponse(BaseModel):
    request_id: str
    model: VectorsRef = Field(description="send it back with the vectors to /v1/score")
    embeddings: list[EmbeddingOut]
    timings_ms: BatchTimings
    gflops: Gflops


class ScoreRequest(TagParams):
    """`POST /v1/score`: vectors from `/v1/embed` against labels or a vocabulary."""

    model: VectorsRef = Field(description="the `model` /v1/embed returned with the vectors")
    embeddings: list[Embedding] = Field(min_length=1)


class VocabularyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(description="the label texts")


class VocabularyOut(BaseModel):
    name: str
    size: int
    builtin: bool
    created: str
    labels: list[str]
    duplicates_removed: list[str] = Field(default_factory=list)


class VocabularyList(BaseModel):
    vocabularies: list[str]


class ExecutionPolicy(BaseModel):
    """How the server runs the model on this device; `source` says, per knob, whether it is
    the device's default (`auto`) or was set (`setting`)."""

    inference_workers: int
    intra_op_threads: int
    max_batch_size: int
    preprocess_workers: int
    max_queue_delay_ms: float
    engine: str
    cores: int
    source: dict[str, Literal["auto", "setting"]]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    engine: str
    groups: int
    dim: int
    input_size: int
    gflops: dict[str, Any]
    accuracy: dict[str, Any]
    calibrated: bool
    state: str
    execution_policy: ExecutionPolicy


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
