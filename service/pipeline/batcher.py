"""Dynamic batching of images in front of the visual engine.

Policy (counted in images, not requests):
- an **idle** engine (no batch running) takes whatever is queued at once, so a lone request
  never waits for the timer;
- while a batch runs, arrivals queue; a free worker dispatches when the batch is full
  (`max_batch_size`), when `max_queue_delay` has passed since the **first** queued image, or
  as soon as the engine goes idle. With one worker (the CPU default) the queue simply fills
  while the engine is busy;
- the queue is bounded (`max_queue_size` images): a submit that does not fit raises
  `QueueFull`; an image whose deadline passed before dispatch is dropped, not run;
- inference runs on worker threads (`workers` batches at a time), never on the event loop;
- images that asked for relevance maps run through `explain_run` instead of `run`: a batch
  holds images of one kind only (the first queued image's; the others keep their place).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import DeadlineExceeded, QueueFull, ServiceError, Unavailable
from service.metrics import Metrics


@dataclass(frozen=True)
class BatchResult:
    """One image's engine output and how it got there."""

    output: np.ndarray  # [G, D]; for an explained image, a tuple (`explain_run`'s outputs)
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future
    enqueued: float
    deadline: float
    explain: bool = False


class DynamicBatcher:
    """Groups queued images into batches for `run(batch [B,...]) -> [B,...]` (or, for images
    submitted with `explain`, `explain_run(batch) -> per-image results`)."""

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
        max_queue_delay_s: float, max_queue_size: int, workers: int = 1,
        retry_after_s: int = 1, simulate_s: float = 0.0, metrics: Metrics | None = None,
        explain_run: Callable[[np.ndarray], Sequence] | None = None,
    ) -> None:
        self._runs = {False: run, True: explain_run}
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.workers = workers
        self.retry_after_s = retry_after_s
        self._simulate_s = simulate_s
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._wake = asyncio.Event()
        self._refusal = ""  # once set (refuse_queued, close): why new images are refused
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ml2p-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def submit(self, arrays: list[np.ndarray], deadline: float,
                     explain: bool = False) -> list[BatchResult]:
        """Queue the images of one request; results in order. `deadline` is perf_counter();
        `explain`: through `explain_run`."""
        if self._refusal:
            raise Unavailable(self._refusal)
        if len(self._queue) + len(arrays) > self.max_queue_size:
            raise QueueFull(
                f"batch queue is full ({len(self._queue)} of {self.max_queue_size} images "
                f"queued); retry after {self.retry_after_s}s", retry_after_s=self.retry_after_s)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(a, loop.create_future(), now, deadline, explain) for a in arrays]
        self._queue.extend(items)
        self._set_depth()
        self._wake.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:  # cancelled/failed request: its queued images are skipped
                if not item.future.done():
                    item.future.cancel()

    async def _dispatch_loop(self) -> None:
        slots = asyncio.Semaphore(self.workers)
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await slots.acquire()
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                slots.release()
                continue
            self._running += 1
            asyncio.get_running_loop().create_task(self._execute(batch, slots))

    async def _wait_for_batch(self) -> None:
        """Only while another batch runs: wait for a full batch, the timer, or idleness."""
        while self._queue and self._running > 0 and len(self._queue) < self.max_batch_size:
            remaining = self._queue[0].enqueued + self.max_queue_delay_s - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        """Up to a full batch of the first live image's kind, in queue order."""
        batch: list[_Item] = []
        other: list[_Item] = []  # images of the other kind: they keep their place
        now = time.perf_counter()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if now > item.deadline:
                item.future.set_exception(
                    DeadlineExceeded("request deadline passed while the image was queued"))
                continue
            if batch and item.explain != batch[0].explain:
                other.append(item)
                continue
            batch.append(item)
        self._queue.extendleft(reversed(other))
        self._set_depth()
        return batch

    async def _execute(self, batch: list[_Item], slots: asyncio.Semaphore) -> None:
        start = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._infer, [item.array for item in batch], batch[0].explain)
        except Exception as exc:  # noqa: BLE001 - surfaced to every waiting request
            error = exc if isinstance(exc, ServiceError) else ServiceError(
                f"inference failed: {type(exc).__name__}: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            outputs = None
        finally:
            self._running -= 1
            slots.release()
            self._wake.set()
        if outputs is None:
            return
        took = time.perf_counter() - start
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.stage_duration.labels(stage="inference").observe(took)
        for item, output in zip(batch, outputs, strict=True):
            if self._metrics is not None:
                self._metrics.queue_duration.observe(start - item.enqueued)
            if not item.future.done():
                item.future.set_result(
                    BatchResult(output, len(batch), start - item.enqueued, took))

    def _infer(self, arrays: list[np.ndarray], explain: bool) -> Sequence:
        batch = np.stack(arrays)
        if self._simulate_s:
            time.sleep(self._simulate_s)
        return self._runs[explain](batch)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._queue))

    def refuse_queued(self, message: str) -> int:
        """Fail every queued image, and any submitted later, with Unavailable(message); the
        running batches finish. Returns how many images were refused."""
        self._refusal = message
        return self._fail_queued(message)

    def _fail_queued(self, message: str) -> int:
        refused = 0
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Unavailable(message))
                refused += 1
        self._queue.clear()
        self._set_depth()
        return refused

    async def close(self) -> None:
        """Stop dispatching and release the worker threads."""
        self._refusal = self._refusal or "the server is shutting down and takes no new work"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_queued("the server stopped")
        self._executor.shutdown(wait=False, cancel_futures=True)
