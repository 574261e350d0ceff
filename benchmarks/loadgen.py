"""Load generation for `ml2p bench serve` and `ml2p bench serve-compare`: one closed loop, one
open loop and one load-generator process, for every system.

- closed loop (`Load(concurrency=C)`): C workers, each sending its next request when the
  previous answer arrives, until the point's deadline or until `max_requests` have been sent;
  throughput = answers completed inside the point's window / its length (the in-flight tail
  drained after the deadline, C requests at C x latency, would otherwise dilute it).
- open loop (`Load(rate=R)`): arrivals on a schedule fixed before the point starts (Poisson:
  exponential gaps from a generator seeded with `seed`, so every system is offered the very
  same arrival times; or `constant` gaps of 1/R), each request sent at its scheduled time
  whatever the earlier ones are doing. At most `max_in_flight` are outstanding: an arrival
  over the cap is not sent and counts as `dropped`. Latency runs from the *scheduled* send
  time, so a late send (a busy generator, a stalled event loop) is charged to the system
  instead of hidden (no coordinated omission); `send_lag_*` says how late sends went out.
  The schedule ends at the deadline or after `max_requests` arrivals; answers still
  outstanding then are awaited for at most `drain_timeout` s and count as errors after that.
  Throughput = answers / time from the point's start to its last answer.
Percentiles are over successful answers. `send(k)` is a coroutine that sends request k and
returns OK, REJECTED (HTTP 429 or gRPC RESOURCE_EXHAUSTED: the server shed it) or ERROR;
raising counts as ERROR. Both loops first send `warmup` requests that are not counted.

The served systems are driven from a separate process on loopback (`run_loadgen`):

    python -m benchmarks.loadgen --protocol rest|grpc|triton --target URL --duration S \\
        --max-requests N (--concurrency C | --rate R [--arrivals poisson] [--seed 0]
        [--max-in-flight 256] [--drain-timeout 60]) [--labels 20] [--field NAME=VALUE ...]

sends pre-encoded requests (raw-socket HTTP/1.1 keep-alive for rest / triton, grpc.aio for
grpc) and prints the summary as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OK, REJECTED, ERROR = "ok", "rejected", "error"
ARRIVALS = ("poisson", "constant")
Send = Callable[[int], Awaitable[str]]

_WORDS = ("dog cat person car bicycle bird boat bottle bus chair cow table horse motorbike plant "
          "sheep sofa train monitor tree sky grass water beach road street house city flower "
          "mountain snow sunset food")
LABEL_WORDS = _WORDS.split()


def labels(n: int) -> list[str]:
    """n distinct candidate labels: words, then two-word phrases, then numbered ones."""
    pool = LABEL_WORDS + [f"{a} {b}" for a in LABEL_WORDS for b in LABEL_WORDS if a != b]
    return pool[:n] + [f"label {i}" for i in range(n - len(pool))]


def images(count: int = 8) -> list[bytes]:
    """Photo-sized JPEGs (640x480) with some texture, so decoding costs what it does."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640, 480), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@dataclass(frozen=True)
class Load:
    """One point's load: closed (`concurrency`) or open (`rate`), bounded by `duration` seconds
    and `max_requests` requests."""

    duration: float
    max_requests: int
    concurrency: int | None = None
    rate: float | None = None
    arrivals: str = "poisson"
    seed: int = 0
    max_in_flight: int = 256
    drain_timeout: float = 60.0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a load is closed (concurrency) or open (rate): give one of them")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals: one of {ARRIVALS}, not {self.arrivals!r}")
        if self.duration <= 0 or self.max_requests < 1 or (self.rate is not None
                                                           and self.rate <= 0):
            raise ValueError("duration, max_requests and rate must be positive")

    @property
    def is_open(self) -> bool:
        return self.rate is not None

    def argv(self) -> list[str]:
        out = ["--duration", repr(self.duration), "--max-requests", str(self.max_requests)]
        if self.is_open:
            return out + ["--rate", repr(self.rate), "--arrivals", self.arrivals, "--seed",
                          str(self.seed), "--max-in-flight", str(self.max_in_flight),
                          "--drain-timeout", repr(self.drain_timeout)]
        return out + ["--concurrency", str(self.concurrency)]

    def timeout(self) -> float:
        """A generous bound on one point's wall time (start-up and warm-up included)."""
        return self.duration * 4 + (self.drain_timeout if self.is_open else 0.0) + 120


# --- the two loops -------------------------------------------------------------------------
def _percentiles(seconds: list[float], prefix: str = "") -> dict:
    values = np.asarray(seconds) * 1000.0
    pct = np.percentile(values, [50, 95, 99]) if len(values) else [float("nan")] * 3
    return {f"{prefix}p{q}_ms": round(float(v), 2) for q, v in zip((50, 95, 99), pct,
                                                                    strict=True)}


def summary(latencies: list[float], errors: int, elapsed: float,
            finished: list[float] | None = None, window: tuple[float, float] | None = None,
            rejected: int = 0) -> dict:
    """Latency percentiles over every answer; throughput = answers completed inside `window`
    (start, end) / its length when given, else answers / `elapsed`."""
    if finished is not None and window is not None:
        count, elapsed = sum(1 for t in finished if t <= window[1]), window[1] - window[0]
    else:
        count = len(latencies)
    return {"requests": len(latencies), "errors": errors, "rejected": rejected,
            "throughput_rps": round(count / elapsed, 2) if elapsed > 0 else 0.0,
            **_percentiles(latencies)}


async def _outcome(send: Send, k: int) -> str:
    try:
        outcome = await send(k)
    except Exception:  # noqa: BLE001 - a failed request is an error, not the end of the point
        return ERROR
    return outcome if outcome in (OK, REJECTED) else ERROR


async def closed_loop(send: Send, concurrency: int, duration: float, max_requests: int,
                      warmup: int = 4, clock: Callable[[], float] = time.perf_counter) -> dict:
    for k in range(warmup):  # connections, caches
        await _outcome(send, k)
    latencies: list[float] = []
    finished: list[float] = []
    counts = dict.fromkeys((OK, REJECTED, ERROR), 0)
    issued = 0
    stop_at = clock() + duration

    async def worker() -> None:
        nonlocal issued
        while clock() < stop_at and issued < max_requests:
            k, issued = issued, issued + 1
            start = clock()
            outcome = await _outcome(send, k)
            end = clock()
            counts[outcome] += 1
            if outcome == OK:
                latencies.append(end - start)
                finished.append(end)

    begin = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    end = clock()
    # the count bound may end the point before its deadline
    return summary(latencies, counts[ERROR], end - begin, finished,
                   (begin, min(stop_at, end)), rejected=counts[REJECTED])


def schedule(rate: float, duration: float, max_requests: int, arrivals: str = "poisson",
             seed: int = 0) -> np.ndarray:
    """Send times of an open-loop point, seconds from its start: every one below `duration`,
    at most `max_requests` of them. Poisson: exponential gaps of mean 1/rate from
    `np.random.default_rng(seed)` (the first arrival one gap in); constant: k / rate."""
    if arrivals == "constant":
        offsets = np.arange(min(max_requests, math.ceil(rate * duration))) / rate
    elif arrivals == "poisson":
        rng = np.random.default_rng(seed)
        expected = rate * duration
        gaps = rng.exponential(1.0 / rate, int(expected + 10 * math.sqrt(expected) + 10))
        while gaps.sum() < duration and len(gaps) < max_requests:
            gaps = np.concatenate([gaps, rng.exponential(1.0 / rate, len(gaps))])
        offsets = np.cumsum(gaps)
    else:
        raise ValueError(f"arrivals: one of {ARRIVALS}, not {arrivals!r}")
    return offsets[offsets < duration][:max_requests]


async def open_loop(send: Send, rate: float, duration: float, max_requests: int, *,
                    arrivals: str = "poisson", seed: int = 0, max_in_flight: int = 256,
                    drain_timeout: float = 60.0, warmup: int = 4,
                    clock: Callable[[], float] = time.perf_counter,
                    trace: list | None = None) -> dict:
    """`trace`, when given, gets (k, due, sent, answered, outcome) per scheduled request
    (clock seconds; sent and answered None for a dropped or unanswered one)."""
    for k in range(warmup):
        await _outcome(send, k)
    offsets = schedule(rate, duration, max_requests, arrivals, seed)
    latencies: list[float] = []
    finished: list[float] = []
    lags: list[float] = []
    counts = dict.fromkeys((OK, REJECTED, ERROR), 0)
    records: dict[int, list] = {}
    in_flight = 0
    dropped = 0
    tasks: list[asyncio.Task] = []

    async def one(k: int, due: float) -> None:
        nonlocal in_flight
        sent = clock()
        lags.append(sent - due)
        records[k][2] = sent
        outcome = await _outcome(send, k)
        answered = clock()
        in_flight -= 1
        counts[outcome] += 1
        records[k][3:] = [answered, outcome]
        if outcome == OK:
            latencies.append(answered - due)  # from the scheduled time, not the actual send
            finished.append(answered)

    begin = clock()
    for k, offset in enumerate(offsets.tolist()):
        due = begin + offset
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        records[k] = [k, due, None, None, "dropped"]
        if in_flight >= max_in_flight:
            dropped += 1
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one(k, due)))
    unanswered: set = set()
    if tasks:
        _, unanswered = await asyncio.wait(tasks, timeout=drain_timeout)
        for task in unanswered:
            task.cancel()
        await asyncio.gather(*unanswered, return_exceptions=True)
    for record in records.values():
        if record[2] is not None and record[3] is None:
            record[4] = "unanswered"
    counts[ERROR] += len(unanswered)
    if trace is not None:
        trace.extend(tuple(r) for r in records.values())
    span = duration if len(offsets) < max_requests else max(float(offsets[-1]), 1e-9)
    last = max(finished, default=begin)
    return {"offered_rps": rate, "arrivals": arrivals, "seed": seed,
            "scheduled": len(offsets), "scheduled_rps": round(len(offsets) / span, 2),
            "sent": len(tasks), "dropped": dropped, "requests": counts[OK],
            "errors": counts[ERROR], "rejected": counts[REJECTED],
            "throughput_rps": round(counts[OK] / (last - begin), 2) if last > begin else 0.0,
            **_percentiles(latencies), "send_lag_p99_ms": _percentiles(lags)["p99_ms"],
            "send_lag_max_ms": round(max(lags, default=0.0) * 1000, 2)}


async def drive(send: Send, load: Load, warmup: int = 4) -> dict:
    """Run one point of `load` against `send`."""
    if load.is_open:
        return await open_loop(send, load.rate, load.duration, load.max_requests,
                               arrivals=load.arrivals, seed=load.seed,
                               max_in_flight=load.max_in_flight,
                               drain_timeout=load.drain_timeout, warmup=warmup)
    return await closed_loop(send, load.concurrency, load.duration, load.max_requests, warmup)


# --- senders -------------------------------------------------------------------------------
class HttpConnections:
    """Keep-alive HTTP/1.1 connections to one server, one request at a time on each, opened
    as needed and reused last-in first-out."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(await asyncio.open_connection(self.host, self.port))

    async def request(self, payload: bytes) -> int:
        """Send one whole request; its status code once the whole answer has arrived."""
        reused = bool(self.idle)
        connection = self.idle.pop() if reused else await asyncio.open_connection(
            self.host, self.port)
        try:
            try:
                status = await self._exchange(connection, payload)
            except (asyncio.IncompleteReadError, ConnectionError):
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: once more on a fresh one
                connection[1].close()
                connection = await asyncio.open_connection(self.host, self.port)
                status = await self._exchange(connection, payload)
        except BaseException:
            connection[1].close()
            raise
        self.idle.append(connection)
        return status

    @staticmethod
    async def _exchange(connection, payload: bytes) -> int:
        reader, writer = connection
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        # line by line, not a substring search: Triton also sends
        # Inference-Header-Content-Length
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


def _http_outcome(status: int) -> str:
    return OK if status == 200 else REJECTED if status == 429 else ERROR


def rest_request(target: str, image: bytes, names: list[str],
                 fields: dict[str, str] | None = None) -> bytes:
    """The service's (and the naive server's) multipart POST /v1/tag, encoded once (`fields`:
    more form fields, e.g. explain)."""
    import httpx

    host = target.removeprefix("http://")
    body = httpx.Request("POST", target, files={"image": ("i.jpg", image)},
                         data={"labels_json": json.dumps(names), **(fields or {})})
    payload = body.read()
    return (f"POST /v1/tag HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
            f"{body.headers['content-type']}\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload


def triton_request(host: str, image: bytes) -> bytes:
    """Triton's KServe v2 infer request with the binary tensor extension: one JPEG in."""
    tensor = len(image).to_bytes(4, "little") + image
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + tensor
    return (f"POST /v2/models/tagger/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def sender(protocol: str, target: str, names: list[str], pictures: list[bytes],
                 connections: int = 0, fields: dict[str, str] | None = None
                 ) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """`send(k)` sending picture k (mod their count) to `target`, and its `close()`.
    rest / triton: `connections` keep-alive connections opened up front; rest: `fields`,
    more form fields."""
    if protocol in ("rest", "triton"):
        host, port = target.removeprefix("http://").split(":")
        requests = [rest_request(target, p, names, fields) if protocol == "rest"
                    else triton_request(host, p) for p in pictures]
        pool = HttpConnections(host, int(port))
        await pool.open(connections)

        async def send(k: int) -> str:
            return _http_outcome(await pool.request(requests[k % len(requests)]))

        async def close() -> None:
            pool.close()

        return send, close
    if protocol == "grpc":
        import grpc

        from service.protos import load

        pb, pb_grpc = load()
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.TaggerStub(channel)
        messages = [pb.TagRequest(image=p, labels=names) for p in pictures]

        async def send(k: int) -> str:
            try:
                await stub.Tag(messages[k % len(messages)], timeout=60)
                return OK
            except grpc.aio.AioRpcError as exc:
                return REJECTED if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else ERROR

        return send, channel.close
    if protocol in ("client-rest", "client-grpc"):  # the ml2p-client library, no retries
        from ml2p_client import AsyncClient, ML2PError, Retry

        url = target if protocol == "client-rest" else f"grpc://{target}"
        client = AsyncClient(url, retry=Retry(attempts=1), timeout=60)

        async def send(k: int) -> str:
            try:
                await client.tag(pictures[k % len(pictures)], names)
                return OK
            except ML2PError as exc:
                return REJECTED if exc.status in (429, "RESOURCE_EXHAUSTED") else ERROR

        return send, client.close
    raise ValueError(f"protocol: rest, grpc, triton, client-rest or client-grpc, not "
                     f"{protocol!r}")


async def _generate(protocol: str, target: str, load: Load, n_labels: int,
                    fields: dict[str, str] | None = None) -> dict:
    send, close = await sender(protocol, target, labels(n_labels), images(),
                               connections=load.concurrency or 0, fields=fields)
    try:
        return await drive(send, load)
    finally:
        await close()


def run_loadgen(protocol: str, target: str, load: Load, n_labels: int = 20,
                fields: dict[str, str] | None = None) -> dict:
    """One point of `load` from a separate load-generator process; its summary (`fields`:
    more REST form fields)."""
    command = [sys.executable, "-m", "benchmarks.loadgen", "--protocol", protocol,
               "--target", target, "--labels", str(n_labels), *load.argv(),
               *(f"--field={k}={v}" for k, v in (fields or {}).items())]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=load.timeout())
    if done.returncode != 0:
        raise RuntimeError(f"{protocol} load generator failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", required=True,
                        choices=["rest", "grpc", "triton", "client-rest", "client-grpc"])
    parser.add_argument("--target", required=True, help="http://HOST:PORT, or HOST:PORT (grpc)")
    parser.add_argument("--labels", type=int, default=20, help="candidate labels (rest, grpc)")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-requests", type=int, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop with C clients")
    mode.add_argument("--rate", type=float, help="open loop at R arrivals/s")
    parser.add_argument("--arrivals", choices=ARRIVALS, default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                        help="rest: one more form field (repeatable), e.g. explain=true")
    args = parser.parse_args(argv)
    load = Load(args.duration, args.max_requests, concurrency=args.concurrency, rate=args.rate,
                arrivals=args.arrivals, seed=args.seed, max_in_flight=args.max_in_flight,
                drain_timeout=args.drain_timeout)
    fields = dict(field.split("=", 1) for field in args.field)
    print(json.dumps(asyncio.run(_generate(args.protocol, args.target, load, args.labels,
                                           fields))))


if __name__ == "__main__":
    main()
