"""Typed per-request results: stage timings and GFLOPs, from the pipeline to the REST and
gRPC responses and the metrics.

The field names of the timing models are the stage names: the REST schema, the gRPC
`Timings` message and the `stage` label of `ml2p_stage_duration_seconds` all use them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImageTimings(BaseModel):
    """Milliseconds one image spent in each stage of the pipeline."""

    decode: float
    preprocess: float
    queue: float
    inference: float
    scoring: float
    explain: float = Field(0.0, description="relevance maps from the explain graph's outputs "
                                            "(0 without explain; the graph runs in inference)")


class Timings(ImageTimings):
    """Milliseconds per stage; `total` is the whole request inside the server."""

    labels: float
    total: float


class BatchTimings(BaseModel):
    labels: float
    total: float


class Gflops(BaseModel):
    image: float
    labels: float = Field(description="label embeddings computed (cache misses only)")
    scoring: float
    explain: float = Field(0.0, description="relevance maps: the explain graph's extra work "
                                            "and each map's products")
    total: float


class ImageGflops(BaseModel):
    """GFLOPs spent on one image: the visual graph and its scoring against the labels."""

    image: float
    scoring: float
    explain: float = 0.0


class ModelRef(BaseModel):
    name: str
    version: str


class VectorsRef(ModelRef):
    """Whose vectors these are: the model and the precision variant of its visual graph."""

    precision: str = Field(description="the visual graph's precision variant, e.g. fp32")

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version} ({self.precision})"


# Stages with a `ml2p_stage_duration_seconds` series: every timed stage but the queue wait
# (`ml2p_queue_duration_seconds`) and the request total (`ml2p_request_duration_seconds`).
METRIC_STAGES = tuple(name for name in Timings.model_fields if name not in ("queue", "total"))
