"""The runtime engine interface and the label tokenizer every engine shares."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from service.artifact import Artifact, check_output
from service.errors import ArtifactError, LabelError

if TYPE_CHECKING:
    from service.settings import Settings

_SPACES = re.compile(r"\s+")


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run here (missing package, no device)."""


class LabelTooLong(LabelError):
    """A label tokenises to more tokens than the text graph takes (never truncated)."""

    code = "label_too_long"

    def __init__(self, message: str, index: int, field: str = "labels") -> None:
        super().__init__(message, field=f"{field}[{index}]")
        self.index = index


class LabelTokenizer:
    """`tokenizer.json` with truncation and padding off: over-limit labels raise LabelTooLong."""

    def __init__(self, artifact: Artifact) -> None:
        path = artifact.file("tokenizer")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ArtifactError(artifact.path, f"{path.name} cannot be loaded: {exc}") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_tokens = artifact.manifest.label_embedder.max_tokens
        self.pad_id = self._tok.token_to_id("[PAD]") or 0

    def normalize(self, text: str) -> str:
        """The text the model actually sees (tokenizer normaliser, collapsed spaces)."""
        text = _SPACES.sub(" ", text).strip()
        normalizer = self._tok.normalizer
        return normalizer.normalize_str(text) if normalizer is not None else text

    def count(self, texts: list[str]) -> list[int]:
        """Token counts (incl. special tokens)."""
        return [len(e.ids) for e in self._tok.encode_batch(texts)]

    def check(self, texts: list[str], positions: list[int] | None = None,
              field: str = "labels") -> None:
        """Raise LabelTooLong naming the first label over the token limit.

        `positions[i]` is text i's index in the caller's list (for the error's field).
        """
        for i, n in enumerate(self.count(texts)):
            if n > self.max_tokens:
                raise LabelTooLong(
                    f"label {texts[i][:60]!r} is {n} tokens, over the model's limit of "
                    f"{self.max_tokens}; shorten it (labels are never truncated)",
                    index=positions[i] if positions is not None else i, field=field,
                )

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (input_ids, attention_mask) int64 [N, T], padded to the longest."""
        encodings = self._tok.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        if max(lengths, default=0) > self.max_tokens:
            self.check(texts)  # raises, naming the label
        width = max(lengths, default=1)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : lengths[row]] = enc.ids
            mask[row, : lengths[row]] = 1
        return ids, mask


class Engine(ABC):
    """Runs an artifact's two graphs. Thread-safe: the batcher calls it from worker threads."""

    name: str = "abstract"

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        self.artifact = artifact
        self.settings = settings
        self.tokenizer = LabelTokenizer(artifact)

    @abstractmethod
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B,3,H,W] -> float32 [B,G,D]."""

    @abstractmethod
    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 [N,T] x2 -> float32 [N,D], L2-normalised."""

    def encode_labels(self, texts: list[str]) -> np.ndarray:
        """Label texts -> float32 [N,D]; LabelTooLong if one is over the token limit."""
        if not texts:
            return np.zeros((0, self.artifact.manifest.dim), np.float32)
        return self._encode_tokens(*self.tokenizer(texts))

    def warmup(self) -> None:
        """Run both graphs once and check the output shapes against the manifest."""
        size = self.artifact.preprocessing.size
        check_output(self.artifact, "visual",
                     self.encode_images(np.zeros((1, 3, size, size), np.float32)).shape)
        check_output(self.artifact, "text", self.encode_labels(["warm up"]).shape)

    def describe(self) -> dict:
        """What `/v1/models` and the metrics report about the engine."""
        return {"engine": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/devices."""
