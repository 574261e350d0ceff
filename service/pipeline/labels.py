"""Label side: request label validation, the LRU embedding cache, and cached embedding."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.errors import LabelError, LabelTooLong
from service.metrics import Metrics
from service.runtime.base import Engine

# Misses beyond this are embedded in several text-engine batches of this size.
EMBED_CHUNK = 512


@dataclass(frozen=True)
class CleanLabels:
    """A request's labels after validation: caller texts, cache keys, removed duplicates."""

    texts: list[str]
    keys: list[str]
    duplicates: list[str]


def clean_labels(labels: list[str], normalize, *, max_labels: int, max_chars: int,
                 field: str = "labels") -> CleanLabels:
    """Validate a label list (422 on empty/too many/too long) and drop duplicates.

    Duplicates are labels whose normalised text (what the model sees) equals an earlier
    one's; the first spelling is kept and the dropped ones are reported.
    """
    if not labels:
        raise LabelError(f"{field} is empty: send at least one label (or a vocabulary name)",
                         field=field)
    if len(labels) > max_labels:
        raise LabelError(f"{len(labels)} labels, over the limit of {max_labels}", field=field)
    texts: list[str] = []
    keys: list[str] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise LabelError(f"label {i} is empty", field=f"{field}[{i}]")
        if len(label) > max_chars:
            raise LabelError(f"label {i} is {len(label)} characters, over the limit of "
                             f"{max_chars}", field=f"{field}[{i}]")
        if not label.isascii():
            try:
                label.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): not text
                raise LabelError(f"label {i} is not valid Unicode text",
                                 field=f"{field}[{i}]") from None
        key = normalize(label)
        if not key:  # e.g. only control characters, which the normaliser strips
            raise LabelError(f"label {i} has no text the model can read", field=f"{field}[{i}]")
        if key in seen:
            duplicates.append(label)
            continue
        seen.add(key)
        texts.append(label)
        keys.append(key)
    return CleanLabels(texts, keys, duplicates)


class LabelCache:
    """Thread-safe LRU of label embeddings; a capacity of 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class CachedLabelEncoder:
    """Embeds labels through the cache: a request's misses go to the text engine together."""

    def __init__(self, engine: Engine, cache: LabelCache, executor: Executor,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.cache = cache
        self.executor = executor
        self.metrics = metrics
        self.namespace = engine.artifact.key  # model name@version

    async def embed(self, labels: CleanLabels) -> tuple[np.ndarray, int]:
        """Embeddings [L, D] in the order of `labels.texts` and the number of cache misses."""
        keys = [f"{self.namespace}\x00{k}" for k in labels.keys]
        rows = [self.cache.get(k) for k in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            texts = [labels.texts[i] for i in missing]
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._encode, texts)
            except LabelTooLong as exc:  # re-index to the caller's list
                raise LabelTooLong(exc.message, index=missing[exc.index]) from None
            for i, vector in zip(missing, vectors, strict=True):
                self.cache.put(keys[i], vector)
                rows[i] = vector
        if self.metrics is not None:
            self.metrics.cache_hits.inc(len(rows) - len(missing))
            self.metrics.cache_misses.inc(len(missing))
        return np.stack(rows), len(missing)

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.engine.check_labels(texts)  # reject before spending any compute
        parts = [self.engine.encode_labels(texts[i:i + EMBED_CHUNK])
                 for i in range(0, len(texts), EMBED_CHUNK)]
        return np.concatenate(parts).astype(np.float32, copy=False)
