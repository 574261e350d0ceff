"""Retries with exponential backoff that honour the server's Retry-After, bounded in count
and in total time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ml2p_client.errors import ML2PError

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """At most `attempts` tries in all, and none started after `max_elapsed` seconds; the
    wait before try n+1 is the server's Retry-After when it gave one, else `backoff` × 2ⁿ⁻¹
    with ±50 % jitter, at most `max_backoff`. Only busy / not-ready answers and failed
    connections are retried (`ML2PError.retryable`); `Retry(attempts=1)` never retries."""

    attempts: int = 4
    backoff: float = 0.2
    max_backoff: float = 5.0
    max_elapsed: float = 30.0

    def delay(self, attempt: int, error: ML2PError) -> float:
        if error.retry_after is not None:
            return min(float(error.retry_after), self.max_backoff)
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return base * random.uniform(0.5, 1.5)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        start = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except ML2PError as error:
                wait = self.delay(attempt, error)
                if (not error.retryable or attempt == self.attempts
                        or time.monotonic() - start + wait > self.max_elapsed):
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises
