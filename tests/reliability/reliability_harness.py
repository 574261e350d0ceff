"""Tools of the reliability tests: process gauges (RSS, peak RSS, open fds) and a lean
HTTP/1.1 load generator (pre-encoded requests on asyncio streams, so the client costs far
less CPU than the server it measures -- both share this machine's cores)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

MiB = 1024 * 1024


# --- the server process ----------------------------------------------------------------------
class ProcessGauge:
    """RSS, peak RSS and open file descriptors of one process (Linux /proc, psutil elsewhere)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process has ever had (exact, kernel-kept)."""
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.rss()  # no /proc: the current value (the tests sample it as well)

    def fds(self) -> int:
        return self.process.num_fds()


class Sampler:
    """Samples RSS and fds every `interval` seconds in a thread: `with Sampler(g) as s: ...`."""

    def __init__(self, gauge: ProcessGauge, interval: float = 0.25) -> None:
        self.gauge = gauge
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, rss, fds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.gauge.rss(), self.gauge.fds()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def metric(url: str, name: str) -> float:
    """One unlabelled sample of the server's Prometheus exposition."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def access_log(log_text: str) -> list[dict]:
    """The server's JSON access-log lines (`"msg": "request"`)."""
    records = []
    for line in log_text.splitlines():
        if line.startswith("{") and '"msg": "request"' in line:
            records.append(json.loads(line))
    return records


# --- load generation ---------------------------------------------------------------------
def encode_tag_request(host: str, port: int, image: bytes, labels: list[str],
                       path: str = "/v1/tag") -> bytes:
    """A whole multipart `POST /v1/tag` as bytes, encoded once and sent many times."""
    request = httpx.Request("POST", f"http://{host}:{port}{path}",
                            files={"image": ("image.png", image, "image/png")},
                            data={"labels": labels})
    body = request.read()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {request.headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@dataclass
class Reply:
    """One request of a load run (times from `time.perf_counter()`)."""

    scheduled: float
    sent: float
    done: float = 0.0
    status: int = 0  # 0: no HTTP response (transport error, see `error`)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    @property
    def latency(self) -> float:
        """From the scheduled arrival (so a client that falls behind cannot hide a delay)."""
        return self.done - self.scheduled


class RawHTTP:
    """Keep-alive HTTP/1.1 connections to one server; at most `max_connections` at once."""

    def __init__(self, host: str, port: int, max_connections: int = 64) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0

    async def prewarm(self, count: int) -> None:
        """Open `count` connections now (so a run does not change the server's fd count)."""
        for _ in range(count):
            self._idle.append(await self._connect())

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, payload: bytes, scheduled: float | None = None) -> Reply:
        async with self._slots:
            reply = Reply(scheduled=scheduled or time.perf_counter(), sent=time.perf_counter())
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect()
            try:
                await self._exchange(connection, payload, reply)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                connection[1].close()
                if reused and not reply.status:  # a keep-alive connection the server closed
                    try:
                        connection = await self._connect()
                        await self._exchange(connection, payload, reply)
                    except (OSError, asyncio.IncompleteReadError, ValueError) as again:
                        connection[1].close()
                        reply.error = repr(again)
                else:
                    reply.error = repr(exc)
            reply.done = time.perf_counter()
            if reply.status and reply.headers.get("connection", "").lower() != "close":
                self._idle.append(connection)
            elif reply.status:
                connection[1].close()
            return reply

    @staticmethod
    async def _exchange(connection, payload: bytes, reply: Reply) -> None:
        reader, writer = connection
        writer.write(payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        reply.status, reply.headers, reply.body = status, headers, body

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def closed_loop(client: RawHTTP, payload: bytes, concurrency: int,
                      duration: float) -> tuple[list[Reply], float]:
    """`concurrency` callers back to back for `duration` s: (replies, elapsed seconds)."""
    replies: list[Reply] = []
    begin = time.perf_counter()
    stop_at = begin + duration

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            replies.append(await client.send(payload))

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return replies, time.perf_counter() - begin


async def open_loop(client: RawHTTP, payload: bytes, rate: float,
                    duration: float) -> list[Reply]:
    """Arrivals every 1/rate s for `duration` s, whatever the server does (open loop)."""
    tasks = []
    begin = time.perf_counter()
    count = int(rate * duration)
    for i in range(count):
        due = begin + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(client.send(payload, scheduled=due)))
    return list(await asyncio.gather(*tasks))


def capacity(replies: list[Reply], elapsed: float) -> float:
    """Successful requests per second of a closed-loop run."""
    return sum(r.status == 200 for r in replies) / elapsed


def p(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
