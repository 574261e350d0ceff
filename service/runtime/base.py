"""The runtime engine interface: an artifact's two graphs behind `encode_images` and
`encode_labels`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from artifact.errors import TokenLimitExceeded
from artifact.loader import Artifact, check_output
from artifact.tokenizer import LabelTokenizer
from service.errors import ExplainUnavailable, LabelTooLong

if TYPE_CHECKING:
    from service.settings import Settings


# the most labels one text-graph run embeds (the label pipeline's chunk size)
MAX_LABEL_BATCH = 512


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run here (missing package, no device)."""


class Engine(ABC):
    """Runs an artifact's two graphs. Thread-safe: the batcher calls it from worker threads."""

    name: str = "abstract"
    # the precision of the visual graph served: part of the identity of the vectors it
    # returns (`/v1/embed`), so that vectors of another variant are refused by `/v1/score`
    vectors_precision: str = "fp32"

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        self.artifact = artifact
        self.settings = settings
        self.tokenizer = LabelTokenizer.of(artifact)

    @abstractmethod
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B,3,H,W] -> float32 [B,G,D]."""

    # why this engine has no relevance maps (None: it has them, `encode_images_explained`)
    explain_missing: str | None = "this engine computes no relevance maps"

    def encode_images_explained(self, batch: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 [B,3,H,W] -> (groups [B,G,D], positions [B,G,P,D], evidence [B,G,D]):
        the relevance-map terms (README "Relevance maps"), in the precision served."""
        raise ExplainUnavailable(self.explain_missing or "no relevance maps", field="explain")

    @abstractmethod
    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 [N,T] x2 -> float32 [N,D], L2-normalised."""

    def check_labels(self, texts: list[str]) -> None:
        """Raise LabelTooLong naming the first label over the text graph's token limit."""
        try:
            self.tokenizer.check(texts)
        except TokenLimitExceeded as exc:
            raise LabelTooLong(exc.message, index=exc.index) from None

    def encode_labels(self, texts: list[str]) -> np.ndarray:
        """Label texts -> float32 [N,D]; LabelTooLong if one is over the token limit."""
        if not texts:
            return np.zeros((0, self.artifact.manifest.dim), np.float32)
        try:
            tokens = self.tokenizer(texts)
        except TokenLimitExceeded as exc:
            raise LabelTooLong(exc.message, index=exc.index) from None
        return self._encode_tokens(*tokens)

    def warmup(self) -> None:
        """Run both graphs once and check the output shapes against the manifest; on GPU
        engines the visual graph runs at every batch size the batcher can form, so TensorRT
        engines and CUDA graphs are built before the first request, not during it."""
        size = self.artifact.preprocessing.size
        sizes = [1] if self.settings.engine == "onnxruntime-cpu" else range(
            1, self.settings.max_batch_size + 1)
        for batch in sizes:
            shape = self.encode_images(np.zeros((batch, 3, size, size), np.float32)).shape
            check_output(self.artifact, "visual", shape)
        if self.explain_missing is None:
            groups, _, _ = self.encode_images_explained(np.zeros((1, 3, size, size), np.float32))
            check_output(self.artifact, "visual", groups.shape)
        check_output(self.artifact, "text", self.encode_labels(["warm up"]).shape)

    def describe(self) -> dict:
        """What `/v1/models` and the metrics report about the engine."""
        return {"engine": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/devices."""
