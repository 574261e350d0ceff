"""Label side: request label validation, the LRU embedding cache, and cached embedding."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import LabelError, LabelTooLong
from service.metrics import Metrics
from service.runtime.base import MAX_LABEL_BATCH, Engine

# A request's misses beyond this are embedded in several text-engine batches of this size;
# vocabularies go in smaller chunks, so request labels can run between them.
EMBED_CHUNK = MAX_LABEL_BATCH
VOCABULARY_CHUNK = 64


@dataclass(frozen=True)
class LabelWarning:
    """A label that is answered, but not as the caller may expect."""

    label: str
    code: str
    message: str


@dataclass(frozen=True)
class CleanLabels:
    """A request's labels after validation: caller texts, cache keys, removed duplicates,
    and warnings about labels kept."""

    texts: list[str]
    keys: list[str]
    duplicates: list[str]
    warnings: list[LabelWarning] = field(default_factory=list)


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

    def __contains__(self, key: str) -> bool:
        """Whether `key` is cached (without counting as a use)."""
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


class LabelScheduler:
    """Runs the text graph on `workers` threads, request labels before vocabulary chunks.

    Jobs are label lists with one future per label; a worker takes the most urgent job
    (priority REQUEST before VOCABULARY, then first come), so a vocabulary being embedded in
    chunks never holds a request's labels back by more than the chunk that is running.
    """

    REQUEST, VOCABULARY = 0, 1

    def __init__(self, encode: Callable[[list[str]], np.ndarray], workers: int,
                 delay_per_label_s: float = 0.0) -> None:
        self._encode = encode
        self._delay_per_label_s = delay_per_label_s
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"ml2p-labels-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, texts: list[str], futures: list[asyncio.Future], priority: int) -> None:
        """Embed `texts`; future i gets row i (or the job's exception)."""
        loop = asyncio.get_running_loop()
        self._jobs.put((priority, next(self._order), texts, futures, loop))

    def close(self) -> None:
        """Stop the workers after the jobs they are running; queued jobs are dropped."""
        for _ in self._threads:
            self._jobs.put((-1, next(self._order), None, None, None))

    def _work(self) -> None:
        while True:
            _, _, texts, futures, loop = self._jobs.get()
            if texts is None:
                return
            try:
                if self._delay_per_label_s:
                    time.sleep(self._delay_per_label_s * len(texts))
                vectors, error = self._encode(texts), None
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                vectors, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, futures, vectors, error)


def _settle(futures: list[asyncio.Future], vectors: np.ndarray | None,
            error: Exception | None) -> None:
    for i, future in enumerate(futures):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(vectors[i])  # type: ignore[index]


class CachedLabelEncoder:
    """Embeds labels through the cache. A request's misses go to the text engine together
    (in chunks of EMBED_CHUNK); a label already being embedded for another request is waited
    for, not embedded again (single flight); vocabularies go in chunks of VOCABULARY_CHUNK at
    the lower priority."""

    def __init__(self, engine: Engine, cache: LabelCache, scheduler: LabelScheduler,
                 executor: Executor, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.cache = cache
        self.scheduler = scheduler
        self.executor = executor  # runs the token-limit check off the event loop
        self.metrics = metrics
        self.namespace = engine.artifact.key  # model name@version
        self._pending: dict[str, asyncio.Future] = {}

    async def embed(self, labels: CleanLabels, *, vocabulary: bool = False
                    ) -> tuple[np.ndarray, int]:
        """Embeddings [L, D] in the order of `labels.texts` and how many labels this call
        embedded (neither cached nor already being embedded)."""
        keys = [f"{self.namespace}\x00{k}" for k in labels.keys]
        loop = asyncio.get_running_loop()
        unknown = [i for i, key in enumerate(keys) if key not in self._pending
                   and key not in self.cache]
        if unknown and not vocabulary:
            # reject before spending any compute, off the event loop (vocabularies were checked
            # when stored); a label evicted from the cache during this await was embedded, so
            # checked, before
            try:
                await loop.run_in_executor(self.executor, self.engine.check_labels,
                                           [labels.texts[i] for i in unknown])
            except LabelTooLong as exc:  # re-index to the caller's list
                raise LabelTooLong(exc.message, index=unknown[exc.index]) from None
        rows: list = [self.cache.get(k) for k in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        new = [i for i in missing if keys[i] not in self._pending]
        for i in new:
            future = self._pending[keys[i]] = loop.create_future()
            future.add_done_callback(lambda f, key=keys[i]: self._done(key, f))
        chunk = VOCABULARY_CHUNK if vocabulary else EMBED_CHUNK
        priority = LabelScheduler.VOCABULARY if vocabulary else LabelScheduler.REQUEST
        for start in range(0, len(new), chunk):
            part = new[start:start + chunk]
            self.scheduler.submit([labels.texts[i] for i in part],
                                  [self._pending[keys[i]] for i in part], priority)
        if self.metrics is not None:
            self.metrics.cache_hits.inc(len(rows) - len(new))
            self.metrics.cache_misses.inc(len(new))
        if missing:
            # (no await since the cache lookup: every missing label is pending now.) Shielded:
            # a request that times out leaves the shared work running for the others.
            vectors = await asyncio.shield(asyncio.gather(*(self._pending[keys[i]]
                                                            for i in missing)))
            for i, vector in zip(missing, vectors, strict=True):
                rows[i] = vector
        return np.stack(rows).astype(np.float32, copy=False), len(new)

    def _done(self, key: str, future: asyncio.Future) -> None:
        self._pending.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self.cache.put(key, future.result())
