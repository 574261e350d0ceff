"""The label tokenizer both sides use: `tokenizer.json` with truncation and padding off.

Labels are padded to the longest in a batch and never truncated; a label over the text
graph's token limit raises `TokenLimitExceeded` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from artifact.errors import ArtifactError, TokenLimitExceeded

if TYPE_CHECKING:
    from artifact.loader import Artifact

_SPACES = re.compile(r"\s+")


class LabelTokenizer:
    """texts -> (input_ids, attention_mask) int64 [N, T], exactly as the text graph expects."""

    def __init__(self, path: str | Path, max_tokens: int) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_tokens = max_tokens
        self.pad_id = self._tok.token_to_id("[PAD]") or 0

    @classmethod
    def of(cls, artifact: Artifact) -> LabelTokenizer:
        """The artifact's tokenizer (ArtifactError when it cannot be read)."""
        path = artifact.file("tokenizer")
        try:
            return cls(path, artifact.manifest.label_embedder.max_tokens)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ArtifactError(artifact.path, f"{path.name} cannot be loaded: {exc}") from None

    def normalize(self, text: str) -> str:
        """The text the model actually sees (tokenizer normaliser, collapsed spaces)."""
        text = _SPACES.sub(" ", text).strip()
        normalizer = self._tok.normalizer
        return normalizer.normalize_str(text) if normalizer is not None else text

    def count(self, texts: list[str]) -> list[int]:
        """Token counts (incl. special tokens)."""
        return [len(e.ids) for e in self._tok.encode_batch(texts)]

    def unreadable(self, texts: list[str]) -> list[int]:
        """Indices of texts the vocabulary cannot read: every token between [CLS] and [SEP]
        is [UNK] (emoji, many non-Latin scripts), so all of them embed alike."""
        unknown = self._tok.token_to_id("[UNK]")
        special = {self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]")} - {None}
        out = []
        for i, encoding in enumerate(self._tok.encode_batch(texts)):
            words = [t for t in encoding.ids if t not in special]
            if words and all(t == unknown for t in words):
                out.append(i)
        return out

    def check(self, texts: list[str]) -> None:
        """Raise TokenLimitExceeded naming the first text over the token limit."""
        for i, n in enumerate(self.count(texts)):
            if n > self.max_tokens:
                raise TokenLimitExceeded(
                    f"label {texts[i][:60]!r} is {n} tokens, over the model's limit of "
                    f"{self.max_tokens}; shorten it (labels are never truncated)", index=i)

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

