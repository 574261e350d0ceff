"""The tagging service: one per process, shared by REST and gRPC.

Owns the runtime engine, the dynamic batcher, the label cache, the vocabularies, readiness and
drain. API layers call `tag(...)` and the vocabulary methods and translate `ServiceError`s;
`build_service` is the one way both servers and the CLI create it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from artifact.gflops import scoring_gflops
from artifact.imaging import ImageDecodeError, ImageTooLargeError, decode_image, preprocess
from artifact.loader import load_artifact
from artifact.manifest import label_novelty
from service.errors import (
    DeadlineExceeded,
    ExplainUnavailable,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    QueueFull,
    Unavailable,
    VectorsMismatch,
)
from service.metrics import Metrics
from service.pipeline.batcher import DynamicBatcher
from service.pipeline.explain import grid_of, relevance
from service.pipeline.labels import (
    CachedLabelEncoder,
    CleanLabels,
    LabelCache,
    LabelScheduler,
    LabelWarning,
    clean_labels,
)
from service.pipeline.scoring import Tag, rank, score
from service.pipeline.vocabularies import Vocabulary, VocabularyStore
from service.results import (
    BatchTimings,
    Gflops,
    ImageGflops,
    ImageTimings,
    ModelRef,
    Timings,
    VectorsRef,
)
from service.runtime import create_engine
from service.runtime.base import Engine
from service.settings import Settings

log = logging.getLogger("ml2p.engine")
PROCESS_START = time.time()  # module import ~ process start, for the start-up time metric
_OFFLOAD_MACS = 2_000_000  # scoring bigger than this runs on a worker thread


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True)
class TagOptions:
    top_k: int | None = None
    min_probability: float | None = None  # 0-1, on the calibrated probability
    min_score: float | None = None  # on the raw score
    threshold: float | None = None  # deprecated: min_probability (raw score if uncalibrated)
    timeout_s: float | None = None  # capped by settings.request_timeout_s
    explain: bool = False  # relevance maps for the first explain_top_k tags of each image
    explain_top_k: int = 5
    explain_png: bool = False  # each map also as a grid-sized greyscale PNG


@dataclass
class ImageResult:
    tags: list[Tag]
    batch_size: int
    timings_ms: ImageTimings
    gflops: ImageGflops


@dataclass
class TagOutcome:
    model: ModelRef
    results: list[ImageResult]
    duplicates_removed: list[str]
    warnings: list[LabelWarning]
    labels_ms: float
    labels_gflops: float
    total_ms: float = 0.0
    cache_misses: int = 0

    def timings(self, index: int = 0) -> Timings:
        """Image `index`'s stage timings with the request's label and total times."""
        return Timings(**self.results[index].timings_ms.model_dump(), labels=self.labels_ms,
                       total=self.total_ms)

    def batch_timings(self) -> BatchTimings:
        return BatchTimings(labels=self.labels_ms, total=self.total_ms)

    def gflops(self) -> Gflops:
        """The whole request's GFLOPs: every image, its scoring, its maps and the labels
        embedded."""
        image = sum(r.gflops.image for r in self.results)
        scoring = sum(r.gflops.scoring for r in self.results)
        explain = sum(r.gflops.explain for r in self.results)
        return Gflops(image=image, labels=self.labels_gflops, scoring=scoring, explain=explain,
                      total=image + scoring + explain + self.labels_gflops)


@dataclass
class EmbedOutcome(TagOutcome):
    """`embed`'s answer: per image its timings and GFLOPs (no tags), and the vectors."""

    vectors: np.ndarray | None = None  # [N, G, D] float32
    vectors_model: VectorsRef | None = None


async def _timed(work):
    """(result of `work`, seconds it took) -- runs concurrently with the image path."""
    start = time.perf_counter()
    result = await work
    return result, time.perf_counter() - start


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class TaggingService:
    """Engine + batcher + label cache + vocabularies, with readiness and graceful drain."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics | None = None):
        self.settings = settings
        self.engine = engine
        self.artifact = engine.artifact
        self.manifest = engine.artifact.manifest
        self.metrics = metrics or Metrics(settings.max_batch_size)
        self.state = State.STARTING
        self.failure: str | None = None
        self.vocabularies = VocabularyStore(settings.vocab_dir, settings.builtin_vocabularies)
        self._preprocess_pool = ThreadPoolExecutor(settings.preprocess_workers,
                                                   thread_name_prefix="ml2p-pre")
        self.cache = LabelCache(settings.label_cache_size)
        self.label_scheduler = LabelScheduler(engine.encode_labels, settings.label_workers_count,
                                              delay_per_label_s=settings.label_delay_ms / 1000.0)
        self.label_encoder = CachedLabelEncoder(engine, self.cache, self.label_scheduler,
                                                self._preprocess_pool, self.metrics)
        self.batcher: DynamicBatcher | None = None
        self._in_flight = 0
        self._images_in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._vocab_tasks: dict[str, asyncio.Future] = {}
        self._reference_vectors = np.zeros((0, self.manifest.dim), np.float32)
        self._started = False
        self._listeners: list = []
        self.metrics.model_info.labels(self.manifest.name, self.manifest.version,
                                       engine.name).set(1)
        self.metrics.queue_capacity.set(settings.max_queue_size)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batcher and warm up in the background; `state` turns READY when done."""
        if self._started:
            return
        self._started = True
        s = self.settings
        self.batcher = DynamicBatcher(
            self.engine.encode_images, max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0, max_queue_size=s.max_queue_size,
            workers=s.inference_workers, retry_after_s=s.retry_after_s,
            simulate_s=s.inference_delay_ms / 1000.0, metrics=self.metrics,
            explain_run=self._explain_batch)
        self.batcher.start()
        self.vocabularies.load()
        self._warmup_task = asyncio.get_running_loop().create_task(self._warmup())

    def add_listener(self, callback) -> None:
        """`callback(state)` on every state change (e.g. the gRPC health status)."""
        self._listeners.append(callback)
        callback(self.state)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.ready.set(1 if state is State.READY else 0)
        for callback in self._listeners:
            callback(state)

    async def _warmup(self) -> None:
        try:
            calibration = self.manifest.calibration
            if calibration is not None and calibration.uses_novelty:
                # the trained-on labels' vectors, through the same text graph as request labels
                self._reference_vectors = await asyncio.get_running_loop().run_in_executor(
                    self._preprocess_pool, self.engine.encode_labels,
                    calibration.reference_labels)
            if self.settings.warmup:
                await asyncio.get_running_loop().run_in_executor(
                    self._preprocess_pool, self.engine.warmup)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log
            self.failure = f"model failed warm-up: {exc}"
            self._set_state(State.FAILED)
            log.error(self.failure)
            return
        if self.state is State.STARTING:
            self._set_state(State.READY)
            self.metrics.startup.set(time.time() - PROCESS_START)
            precision = self.engine.describe().get("precision")
            log.info("ready: model %s, engine %s%s", self.artifact.key, self.engine.name,
                     f", precision {precision['served']} ({precision['reason']})"
                     if precision else "")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Until warm-up has finished (True when READY)."""
        await asyncio.wait_for(asyncio.shield(self._warmup_task), timeout)
        return self.state is State.READY

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, wait for in-flight requests (max `timeout` s). True if drained."""
        if self.state is not State.FAILED:
            self._set_state(State.DRAINING)  # new requests are refused from here on; the
            # admitted ones still go through the batcher (which closes only in close())
        log.info("draining: %d request(s) in flight", self._in_flight)
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout)
            return True
        except TimeoutError:
            # queued images will not run: answer them now (503) instead of leaving them to
            # be cut off when the HTTP server stops; running batches still finish
            refused = 0 if self.batcher is None else self.batcher.refuse_queued(
                f"the server is shutting down: its drain timeout of {timeout:g}s ran out "
                "before this image ran")
            log.warning("drain timeout: %d request(s) still in flight, %d queued image(s) "
                        "refused", self._in_flight, refused)
            return False

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self.label_scheduler.close()
        self.engine.close()

    def check_ready(self) -> None:
        """Raise Unavailable (with the reason) unless READY."""
        if self.state is State.READY:
            return
        reason = {State.STARTING: "the model is still loading",
                  State.DRAINING: "the server is shutting down",
                  State.FAILED: self.failure or "the model failed to load"}[self.state]
        raise Unavailable(f"not ready: {reason}")

    def _enter(self, images: int) -> None:
        """Admit a request, or refuse it: not ready (503) or over capacity (429).

        Capacity counts images anywhere in the pipeline (decoding, queued, running): the
        batch queue plus one batch per inference worker, so decode work cannot pile up
        unbounded in front of the queue either.
        """
        self.check_ready()
        s = self.settings
        capacity = s.image_capacity
        if self._images_in_flight + images > capacity and self._images_in_flight:
            raise QueueFull(f"server at capacity ({self._images_in_flight} images in flight, "
                            f"limit {capacity}); retry after {s.retry_after_s}s",
                            retry_after_s=s.retry_after_s)
        self._in_flight += 1
        self._images_in_flight += images
        self._quiet.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _exit(self, images: int) -> None:
        self._in_flight -= 1
        self._images_in_flight -= images
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._quiet.set()

    # --- tagging ---------------------------------------------------------------------------
    def clean(self, labels: list[str], *, limit: int | None = None,
              field: str = "labels") -> CleanLabels:
        """Validate and de-duplicate a label list (limits from the settings); labels the
        tokenizer cannot read are kept, with a warning each."""
        clean = clean_labels(labels, self.engine.tokenizer.normalize,
                             max_labels=limit or self.settings.max_labels,
                             max_chars=self.settings.max_label_chars, field=field)
        unreadable = self.engine.tokenizer.unreadable(clean.texts)
        if not unreadable:
            return clean
        return replace(clean, warnings=[LabelWarning(
            clean.texts[i], "unknown_tokens",
            "the text model's vocabulary knows none of this label's words or characters "
            "(e.g. emoji, or a script it was not trained on): it is scored like any other "
            "unreadable label, so its score and rank carry no meaning") for i in unreadable])

    async def tag(self, images: list[bytes], labels: list[str] | None = None,
                  vocabulary: str | None = None, options: TagOptions = TagOptions()) -> TagOutcome:
        """Tag images against caller labels or a stored vocabulary."""
        return await self._admitted(len(images), options, lambda deadline: self._tag(
            images, labels, vocabulary, options, deadline))

    async def embed(self, images: list[bytes], options: TagOptions = TagOptions()
                    ) -> EmbedOutcome:
        """The images' G×D vectors (what `score` re-ranks later against any labels)."""
        return await self._admitted(len(images), options, lambda deadline: self._embed(
            images, deadline))

    async def score(self, vectors: np.ndarray, model: VectorsRef, labels: list[str] | None = None,
                    vocabulary: str | None = None, options: TagOptions = TagOptions()
                    ) -> TagOutcome:
        """Stored vectors [N, G, D] from `embed` against labels, exactly as `tag` would rank
        the images they came from; vectors of another model, version or precision variant
        are refused (409)."""
        return await self._admitted(0, options, lambda deadline: self._score(
            vectors, model, labels, vocabulary, options))

    @property
    def vectors_ref(self) -> VectorsRef:
        """The identity of the vectors this server computes."""
        m = self.manifest
        return VectorsRef(name=m.name, version=m.version,
                          precision=self.engine.vectors_precision)

    async def _admitted(self, images: int, options: TagOptions, work):  # noqa: ANN001, ANN202
        """Run `work(deadline)` as one admitted request under its deadline."""
        start = time.perf_counter()
        self._enter(images)
        try:
            timeout = min(options.timeout_s or self.settings.request_timeout_s,
                          self.settings.request_timeout_s)
            try:
                async with asyncio.timeout(timeout):
                    outcome = await work(start + timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"request did not finish within its deadline of {timeout:g}s") from None
        finally:
            self._exit(images)
        outcome.total_ms = _ms(time.perf_counter() - start)
        self.metrics.gflops.inc(outcome.gflops().total)
        return outcome

    def _check_images(self, images: list[bytes]) -> None:
        if not images:
            raise InvalidRequest("no image in the request", field="image")
        if len(images) > self.settings.max_images:
            raise InvalidRequest(f"{len(images)} images, over the limit of "
                                 f"{self.settings.max_images}", field="images")

    def _label_work(self, labels: list[str] | None, vocabulary: str | None, options: TagOptions
                    ) -> tuple[CleanLabels, asyncio.Future, tuple[float | None, float | None]]:
        """Checked options and labels; their embedding started (a future of ((matrix, misses),
        seconds)); the cut-offs."""
        if options.top_k is not None and options.top_k < 1:
            raise InvalidRequest("top_k must be at least 1", field="top_k")
        cut_offs = self._cut_offs(options)
        if (labels is None) == (vocabulary is None):
            raise InvalidRequest("send either labels or a vocabulary name (exactly one)",
                                 field="labels")
        if labels is not None:
            clean = self.clean(labels)
            label_work = self.label_encoder.embed(clean)
        else:
            vocab = self.vocabularies.get(vocabulary)  # type: ignore[arg-type]
            clean = self._vocab_clean(vocab)
            label_work = self._vocab_embeddings(vocab)
        return clean, asyncio.ensure_future(_timed(label_work)), cut_offs

    async def _encode_images(self, images: list[bytes], deadline: float,
                             explain: bool = False) -> tuple[list, list]:
        """Decode, preprocess and batch the images: (prepared, batcher outputs); with
        `explain` each output is (groups, positions, evidence) from the explain graph."""
        prepared = await asyncio.gather(*(self._prepare(data, i)
                                          for i, data in enumerate(images)))
        assert self.batcher is not None
        return prepared, await self.batcher.submit([p[0] for p in prepared], deadline, explain)

    def _explain_batch(self, batch: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """The explain graph on a batch: per image (groups, positions, evidence)."""
        return list(zip(*self.engine.encode_images_explained(batch), strict=True))

    def _check_explain(self, options: TagOptions, images: int) -> None:
        """422 unless the maps asked for can be given: the model has them, within the limit."""
        if not options.explain:
            return
        if self.engine.explain_missing is not None:
            raise ExplainUnavailable(self.engine.explain_missing, field="explain")
        k, limit = options.explain_top_k, self.settings.explain_max_maps
        if k < 1:
            raise InvalidRequest("explain_top_k must be at least 1", field="explain_top_k")
        if k * images > limit:
            per = f" for each of {images} images" if images > 1 else ""
            raise InvalidRequest(f"explain_top_k={k}{per} asks for {k * images} relevance maps, "
                                 f"over the server's limit of {limit} per request "
                                 f"(ML2P_EXPLAIN_MAX_MAPS)", field="explain_top_k")

    def _explained(self, tag_lists: list[list[Tag]], outputs: list, matrix: np.ndarray,
                   clean: CleanLabels, options: TagOptions
                   ) -> tuple[list[list[Tag]], list[float], list[float]]:
        """The first explain_top_k tags of each image with their maps; per image the seconds
        and GFLOPs the maps took (the explain graph's extra work included)."""
        index = {text: i for i, text in enumerate(clean.texts)}
        m = self.manifest
        explained, seconds, gflops = [], [], []
        for tags, out in zip(tag_lists, outputs, strict=True):
            start = time.perf_counter()
            groups, positions, evidence = out.output
            head = [replace(tag, relevance=relevance(groups, positions, evidence,
                                                     matrix[index[tag.label]],
                                                     options.explain_png))
                    for tag in tags[:options.explain_top_k]]
            explained.append(head + tags[options.explain_top_k:])
            seconds.append(time.perf_counter() - start)
            rows, cols = grid_of(positions)
            per_map = 2.0 * rows * cols * m.dim / 1e9
            graph = (m.explain.gflops_image - m.gflops.image if m.explain is not None
                     else 2.0 * m.groups * m.groups * rows * cols * m.dim / 1e9)  # the mixing
            gflops.append(graph + per_map * len(head))
        return explained, seconds, gflops

    async def _ranked(self, groups: np.ndarray, matrix: np.ndarray, clean: CleanLabels,
                      options: TagOptions, cut_offs: tuple[float | None, float | None]
                      ) -> tuple[list[list[Tag]], float]:
        """Scores of groups [B, G, D] against label vectors, ranked per image; seconds per
        image spent."""
        scoring_start = time.perf_counter()
        if groups.size * len(matrix) > _OFFLOAD_MACS:
            scores = await asyncio.get_running_loop().run_in_executor(
                self._preprocess_pool, score, groups, matrix)
        else:
            scores = score(groups, matrix)
        calibration = self.manifest.calibration
        novelty = (label_novelty(matrix, self._reference_vectors)
                   if calibration is not None and calibration.uses_novelty else None)
        min_probability, min_score = cut_offs
        tag_lists = [rank(row, clean.texts, top_k=options.top_k, min_score=min_score,
                          min_probability=min_probability, calibration=calibration,
                          novelty=novelty)
                     for row in scores]
        return tag_lists, (time.perf_counter() - scoring_start) / max(len(groups), 1)

    async def _tag(self, images: list[bytes], labels: list[str] | None, vocabulary: str | None,
                   options: TagOptions, deadline: float) -> TagOutcome:
        self._check_images(images)
        self._check_explain(options, len(images))
        clean, label_task, cut_offs = self._label_work(labels, vocabulary, options)
        try:
            prepared, outputs = await self._encode_images(images, deadline, options.explain)
            (matrix, misses), labels_s = await label_task
        finally:
            if not label_task.done():
                label_task.cancel()
            elif not label_task.cancelled():
                label_task.exception()  # retrieved: a label error after an image error
        groups = np.stack([o.output[0] if options.explain else o.output for o in outputs])
        tag_lists, scoring_s = await self._ranked(groups, matrix, clean, options, cut_offs)
        self._observe(labels=labels_s, scoring=scoring_s * len(images))
        m = self.manifest
        results = self._image_results(prepared, outputs, tag_lists, scoring_s,
                                      scoring_gflops(m.groups, m.dim, len(clean.texts)))
        if options.explain:
            tag_lists, seconds, gflops = self._explained(tag_lists, outputs, matrix, clean,
                                                         options)
            self._observe(explain=sum(seconds))
            for result, tags, took, cost in zip(results, tag_lists, seconds, gflops,
                                                strict=True):
                result.tags = tags
                result.timings_ms.explain = _ms(took)
                result.gflops.explain = cost
        return self._outcome(results, clean, labels_s, misses)

    def _image_results(self, prepared: list, outputs: list, tag_lists: list[list[Tag]],
                       scoring_s: float, scoring_gflops_per_image: float) -> list[ImageResult]:
        """Each image's tags with its stage timings and GFLOPs (`prepared`: decode and
        preprocess seconds, `outputs`: the batcher's queue and inference seconds)."""
        return [
            ImageResult(
                tags=tags, batch_size=out.batch_size,
                timings_ms=ImageTimings(decode=_ms(pre[1]), preprocess=_ms(pre[2]),
                                        queue=_ms(out.queue_s), inference=_ms(out.inference_s),
                                        scoring=_ms(scoring_s)),
                gflops=ImageGflops(image=self.manifest.gflops.image,
                                   scoring=scoring_gflops_per_image))
            for tags, pre, out in zip(tag_lists, prepared, outputs, strict=True)
        ]

    def _outcome(self, results: list[ImageResult], clean: CleanLabels, labels_s: float,
                 misses: int) -> TagOutcome:
        m = self.manifest
        return TagOutcome(
            model=ModelRef(name=m.name, version=m.version), results=results,
            duplicates_removed=clean.duplicates, warnings=clean.warnings,
            labels_ms=_ms(labels_s), labels_gflops=m.gflops.label * misses,
            cache_misses=misses)

    async def _embed(self, images: list[bytes], deadline: float) -> EmbedOutcome:
        self._check_images(images)
        prepared, outputs = await self._encode_images(images, deadline)
        m = self.manifest
        return EmbedOutcome(model=ModelRef(name=m.name, version=m.version),
                            duplicates_removed=[], warnings=[], labels_ms=0.0,
                            labels_gflops=0.0, vectors_model=self.vectors_ref,
                            vectors=np.stack([o.output for o in outputs]),
                            results=self._image_results(prepared, outputs, [[]] * len(images),
                                                        0.0, 0.0))

    async def _score(self, vectors: np.ndarray, model: VectorsRef, labels: list[str] | None,
                     vocabulary: str | None, options: TagOptions) -> TagOutcome:
        if options.explain:
            raise InvalidRequest("explain needs the image: stored vectors have no positions "
                                 "(ask /v1/tag with explain=true)", field="explain")
        ours = self.vectors_ref
        if model != ours:
            raise VectorsMismatch(
                f"the vectors are of {model.key}, this server computes {ours.key}: embed the "
                f"images again with this model (vectors of another model, version or "
                f"precision variant rank differently)", field="model")
        m = self.manifest
        if vectors.ndim != 3 or vectors.shape[1:] != (m.groups, m.dim) or not len(vectors):
            raise InvalidRequest(f"vectors of shape {list(vectors.shape)}: expected [N, "
                                 f"{m.groups}, {m.dim}] (N >= 1) for {ours.key}",
                                 field="embeddings")
        if len(vectors) > self.settings.max_score_vectors:
            raise InvalidRequest(f"{len(vectors)} vector sets, over the limit of "
                                 f"{self.settings.max_score_vectors}", field="embeddings")
        if not np.isfinite(vectors).all():
            raise InvalidRequest("the vectors hold NaN or infinite values", field="embeddings")
        clean, label_task, cut_offs = self._label_work(labels, vocabulary, options)
        (matrix, misses), labels_s = await label_task
        groups = vectors.astype(np.float32, copy=False)
        tag_lists, scoring_s = await self._ranked(groups, matrix, clean, options, cut_offs)
        self._observe(labels=labels_s, scoring=scoring_s * len(groups))
        per_image_scoring = scoring_gflops(m.groups, m.dim, len(clean.texts))
        results = [ImageResult(tags=tags, batch_size=len(groups),
                               timings_ms=ImageTimings(decode=0.0, preprocess=0.0, queue=0.0,
                                                       inference=0.0, scoring=_ms(scoring_s)),
                               gflops=ImageGflops(image=0.0, scoring=per_image_scoring))
                   for tags in tag_lists]
        return self._outcome(results, clean, labels_s, misses)

    def _cut_offs(self, options: TagOptions) -> tuple[float | None, float | None]:
        """(min_probability, min_score), checked: a probability lies in 0-1 and needs a
        calibrated model; `threshold` is the old name of min_probability (of min_score for a
        model without calibration), kept with the same checks."""
        calibrated = self.manifest.calibration is not None
        min_probability, min_score = options.min_probability, options.min_score
        for name, value in (("min_probability", min_probability), ("min_score", min_score),
                            ("threshold", options.threshold)):
            if value is not None and not math.isfinite(value):
                raise InvalidRequest(f"{name} must be a finite number", field=name)
        if options.threshold is not None:
            if min_probability is not None or min_score is not None:
                raise InvalidRequest("threshold is the deprecated name of min_probability: "
                                     "send min_probability or min_score, not both",
                                     field="threshold")
            if calibrated:
                min_probability = options.threshold
            else:
                min_score = options.threshold
        if min_probability is not None:
            field = "min_probability" if options.threshold is None else "threshold"
            if not 0.0 <= min_probability <= 1.0:
                raise InvalidRequest(f"{field} is a probability and must lie in 0-1, got "
                                     f"{min_probability:g} (a percentage? send "
                                     f"{min_probability / 100:g}; raw scores: min_score)",
                                     field=field)
            if not calibrated:
                raise InvalidRequest(f"model {self.artifact.key} has no calibration, so no "
                                     "probabilities: filter raw scores with min_score",
                                     field=field)
        return min_probability, min_score

    async def _prepare(self, data: bytes, index: int) -> tuple[np.ndarray, float, float]:
        loop = asyncio.get_running_loop()
        array, decode_s, preprocess_s = await loop.run_in_executor(
            self._preprocess_pool, self._decode_and_preprocess, data, index)
        self._observe(decode=decode_s, preprocess=preprocess_s)
        return array, decode_s, preprocess_s

    def _decode_and_preprocess(self, data: bytes, index: int) -> tuple[np.ndarray, float, float]:
        field = "image" if index == 0 else f"images[{index}]"
        t0 = time.perf_counter()
        spec = self.artifact.preprocessing
        try:
            image = decode_image(data, max_pixels=self.settings.max_pixels, target_size=spec.size)
        except ImageTooLargeError as exc:
            raise ImageTooLarge(str(exc), field=field) from None
        except ImageDecodeError as exc:
            raise InvalidImage(str(exc), field=field) from None
        t1 = time.perf_counter()
        array = preprocess(image, spec)
        return array, t1 - t0, time.perf_counter() - t1

    def _observe(self, **stages: float) -> None:
        for stage, seconds in stages.items():
            self.metrics.stage_duration.labels(stage=stage).observe(seconds)

    # --- vocabularies ----------------------------------------------------------------------
    def _vocab_clean(self, vocab: Vocabulary) -> CleanLabels:
        if vocab.clean is None:
            vocab.clean = self.clean(vocab.labels, limit=max(len(vocab.labels), 1),
                                     field="vocabulary")
        return vocab.clean

    async def _vocab_embeddings(self, vocab: Vocabulary) -> tuple[np.ndarray, int]:
        """The vocabulary's label matrix, embedded once (shared by concurrent requests)."""
        if vocab.embeddings is not None:
            return vocab.embeddings, 0
        task = self._vocab_tasks.get(vocab.name)
        if task is None or task.cancelled():
            task = asyncio.ensure_future(self.label_encoder.embed(self._vocab_clean(vocab),
                                                                  vocabulary=True))
            self._vocab_tasks[vocab.name] = task
        try:
            matrix, misses = await asyncio.shield(task)  # a timed-out request keeps the work
        except Exception:
            # a failed embedding is not remembered: the next request tries again
            if self._vocab_tasks.get(vocab.name) is task:
                del self._vocab_tasks[vocab.name]
            raise
        vocab.embeddings = matrix
        self._vocab_tasks.pop(vocab.name, None)
        return matrix, misses

    async def put_vocabulary(self, name: str,
                             labels: list[str]) -> tuple[Vocabulary, bool, list[str]]:
        """Validate (limits, token lengths) and store; embedding starts in the background.

        Returns the vocabulary, whether it is new, and the duplicate labels dropped.
        """
        self.check_ready()
        loop = asyncio.get_running_loop()
        # off the event loop: tokenizing thousands of labels would stall every other request
        clean = await loop.run_in_executor(
            self._preprocess_pool,
            functools.partial(self.clean, labels, limit=self.settings.max_vocabulary_labels))
        await loop.run_in_executor(self._preprocess_pool, self.engine.check_labels, clean.texts)
        vocab, created = self.vocabularies.put(name, clean.texts)
        vocab.clean = clean
        self._vocab_tasks.pop(name, None)
        task = asyncio.ensure_future(self._vocab_embeddings(vocab))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no stray warning
        return vocab, created, clean.duplicates

    def delete_vocabulary(self, name: str) -> None:
        self.check_ready()
        self.vocabularies.delete(name)
        self._vocab_tasks.pop(name, None)

    def describe(self) -> dict:
        """What `/v1/models` reports."""
        m = self.manifest
        details = self.engine.describe()
        return {
            "name": m.name, "version": m.version, "engine": self.engine.name,
            "engine_details": details, "state": self.state.value,
            "execution_policy": self.settings.policy(),
            "precision": details.get("precision"),
            "backbone": m.backbone, "groups": m.groups, "dim": m.dim,
            "input_size": self.artifact.preprocessing.size,
            "label_embedder": m.label_embedder.model_dump(),
            "gflops": m.gflops.model_dump(exclude_none=True),
            "calibrated": m.calibration is not None,
            "explain": {"available": self.engine.explain_missing is None,
                        "reason": self.engine.explain_missing,
                        "max_maps": self.settings.explain_max_maps,
                        **({"rows": m.explain.rows, "cols": m.explain.cols}
                           if m.explain is not None else {})},
            "accuracy": m.accuracy, "created": m.created,
            "vocabularies": self.vocabularies.names(),
        }


def build_service(settings: Settings) -> TaggingService:
    """Load + check the artifact and create the engine (raises ArtifactError/EngineUnavailable)."""
    artifact = load_artifact(settings.model)
    engine = create_engine(settings, artifact)
    return TaggingService(settings, engine, Metrics(settings.max_batch_size))
