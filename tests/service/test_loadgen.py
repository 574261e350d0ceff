"""The benchmarks' load generator (benchmarks/loadgen.py): closed and open loop against fake
targets (coroutines, a tiny asyncio HTTP server on loopback), no model, no server process.
Time tolerances are loose: the machine may be busy."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from benchmarks import loadgen


async def _ok(k: int) -> str:
    await asyncio.sleep(0.001)
    return loadgen.OK


def test_constant_schedule_is_bounded_by_time_and_count() -> None:
    offsets = loadgen.schedule(100, 0.5, 1000, "constant")
    assert len(offsets) == 50 and offsets[0] == 0
    assert np.allclose(np.diff(offsets), 0.01)
    assert len(loadgen.schedule(100, 0.5, 7, "constant")) == 7
    assert (loadgen.schedule(100, 0.5, 1000, "poisson") < 0.5).all()
    with pytest.raises(ValueError):
        loadgen.schedule(100, 0.5, 10, "bursty")


def test_poisson_schedule_is_seeded_with_exponential_gaps() -> None:
    offsets = loadgen.schedule(1000, 10, 10**6, "poisson", seed=3)
    assert np.array_equal(offsets, loadgen.schedule(1000, 10, 10**6, "poisson", seed=3))
    other = loadgen.schedule(1000, 10, 10**6, "poisson", seed=4)
    assert not np.array_equal(offsets[:100], other[:100])
    assert 9500 < len(offsets) < 10500  # mean 10,000, sd 100
    gaps = np.diff(offsets)
    assert (gaps > 0).all()
    assert abs(gaps.mean() - 1e-3) < 5e-5
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential: coefficient of variation 1
    assert len(loadgen.schedule(1000, 10, 123, "poisson")) == 123


def test_open_loop_sends_on_schedule_whatever_the_answers_take() -> None:
    # each answer takes 0.2 s, ten gaps of the schedule: a closed loop would wait for it
    sent: dict[int, float] = {}

    async def send(k: int) -> str:
        sent[k] = time.perf_counter()
        await asyncio.sleep(0.2)
        return loadgen.OK

    trace: list = []
    result = asyncio.run(loadgen.open_loop(send, 50, 0.6, 1000, arrivals="constant", warmup=0,
                                      trace=trace))
    assert result["scheduled"] == result["sent"] == result["requests"] == 30
    assert result["dropped"] == result["errors"] == result["rejected"] == 0
    assert sorted(sent) == list(range(30))
    due = {k: d for k, d, *_ in trace}
    assert np.allclose(np.diff([due[k] for k in range(30)]), 0.02)
    lags = [sent[k] - due[k] for k in range(30)]
    assert min(lags) >= 0 and np.median(lags) < 0.01 and max(lags) < 0.1
    assert 200 <= result["p50_ms"] < 300 and result["p99_ms"] < 400
    assert result["offered_rps"] == 50 and result["scheduled_rps"] == 50


def test_open_loop_latency_runs_from_the_scheduled_time() -> None:
    # request 0 stalls the generator itself for 0.3 s (a blocking call); requests 1-14, due
    # every 20 ms meanwhile, go out late: their latency must include the wait, though each
    # takes ~1 ms once sent (measured from the send, that would be coordinated omission)
    async def send(k: int) -> str:
        if k == 0:
            time.sleep(0.3)
        await asyncio.sleep(0.001)
        return loadgen.OK

    trace: list = []
    result = asyncio.run(loadgen.open_loop(send, 50, 1.0, 1000, arrivals="constant", warmup=0,
                                      trace=trace))
    assert result["requests"] == 50
    by_k = {k: (due, sent, answered) for k, due, sent, answered, _ in trace}
    for k in range(1, 11):
        due, sent, answered = by_k[k]
        assert sent - due > 0.09 and answered - due >= sent - due
    assert result["send_lag_max_ms"] >= 250
    assert result["p95_ms"] >= 200  # 15 of 50 answers 20-300 ms after their due time
    assert result["p50_ms"] < 50


def test_open_loop_count_and_time_bounds() -> None:
    t0 = time.perf_counter()
    result = asyncio.run(loadgen.open_loop(_ok, 1000, 30, 10, warmup=0))
    assert result["scheduled"] == result["sent"] == result["requests"] == 10
    assert time.perf_counter() - t0 < 2  # the count ended it, not the 30 s
    t0 = time.perf_counter()
    result = asyncio.run(loadgen.open_loop(_ok, 100, 0.3, 10**6, arrivals="constant", warmup=0))
    assert result["scheduled"] == result["requests"] == 30
    assert time.perf_counter() - t0 < 1.3


def test_open_loop_in_flight_cap_drops_and_drain_timeout_bounds_the_wait() -> None:
    async def hang(k: int) -> str:
        await asyncio.sleep(3600)
        return loadgen.OK

    t0 = time.perf_counter()
    trace: list = []
    result = asyncio.run(loadgen.open_loop(hang, 100, 0.1, 1000, arrivals="constant",
                                      max_in_flight=3, drain_timeout=0.2, warmup=0, trace=trace))
    assert time.perf_counter() - t0 < 2
    assert (result["scheduled"], result["sent"], result["dropped"]) == (10, 3, 7)
    assert (result["requests"], result["errors"]) == (0, 3)
    assert [outcome for *_, outcome in trace] == ["unanswered"] * 3 + ["dropped"] * 7


async def _mixed(k: int) -> str:
    if k % 3 == 0:
        return loadgen.REJECTED
    if k % 3 == 1:
        raise ConnectionError("refused")
    return loadgen.OK


def test_outcomes_are_counted_apart() -> None:
    result = asyncio.run(loadgen.open_loop(_mixed, 300, 1.0, 30, arrivals="constant", warmup=0))
    assert (result["requests"], result["errors"], result["rejected"]) == (10, 10, 10)
    result = asyncio.run(loadgen.closed_loop(_mixed, 3, 5.0, 30, warmup=0))
    assert (result["requests"], result["errors"], result["rejected"]) == (10, 10, 10)


def test_closed_loop_keeps_c_in_flight_and_is_bounded() -> None:
    active = peak = 0

    async def send(k: int) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return loadgen.OK

    t0 = time.perf_counter()
    result = asyncio.run(loadgen.closed_loop(send, 4, 30.0, 40, warmup=0))
    assert time.perf_counter() - t0 < 2
    assert result["requests"] == 40 and peak == 4
    # the count ended the point early: throughput over the time it took (~400/s), not 30 s
    assert result["throughput_rps"] > 100
    t0 = time.perf_counter()
    result = asyncio.run(loadgen.closed_loop(send, 2, 0.2, 10**6, warmup=0))
    assert time.perf_counter() - t0 < 1
    assert 5 < result["requests"] <= 42


def test_load_checks_and_command_line() -> None:
    with pytest.raises(ValueError):
        loadgen.Load(1.0, 10)
    with pytest.raises(ValueError):
        loadgen.Load(1.0, 10, concurrency=2, rate=5.0)
    load = loadgen.Load(2.5, 100, rate=40.0, arrivals="constant", seed=7, max_in_flight=9)
    argv = load.argv()
    for flag, value in (("--rate", "40.0"), ("--arrivals", "constant"), ("--seed", "7"),
                        ("--max-in-flight", "9"), ("--duration", "2.5")):
        assert argv[argv.index(flag) + 1] == value
    assert "--concurrency" in loadgen.Load(1.0, 10, concurrency=3).argv()


async def _tiny_http_server(close_after_each: bool = False):
    """HTTP/1.1 on loopback: every 4th request gets 429, the rest 200 (with Triton's extra
    content-length-like header, which must not be taken for the length)."""
    bodies: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                bodies.append(await reader.readexactly(length))
                status = b"429 Too Many Requests" if len(bodies) % 4 == 0 else b"200 OK"
                payload = b'{"scores": [0.5]}'
                writer.write(b"HTTP/1.1 " + status + b"\r\nInference-Header-Content-Length: 3"
                             + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", bodies


@pytest.mark.parametrize("protocol", ["triton", "rest"])
def test_http_sender_against_a_tiny_server(protocol: str) -> None:
    async def main():
        server, url, bodies = await _tiny_http_server()
        send, close = await loadgen.sender(protocol, url, ["dog", "cat"],
                                      [b"\xff\xd8one", b"\xff\xd8two"], connections=2)
        result = await loadgen.open_loop(send, 200, 1.0, 40, arrivals="constant", warmup=0)
        await close()
        server.close()
        await server.wait_closed()
        return result, bodies

    result, bodies = asyncio.run(main())
    assert (result["sent"], result["requests"], result["rejected"], result["errors"]) == \
        (40, 30, 10, 0)
    assert len(bodies) == 40 and bodies[0] != bodies[1]
    if protocol == "triton":
        assert bodies[0].endswith((5).to_bytes(4, "little") + b"\xff\xd8one")
    else:
        assert b'["dog", "cat"]' in bodies[0] and b"\xff\xd8one" in bodies[0]


def test_http_sender_reopens_a_connection_the_server_closed() -> None:
    async def main():
        server, url, bodies = await _tiny_http_server(close_after_each=True)
        send, close = await loadgen.sender("triton", url, [], [b"\xff\xd8x"], connections=1)
        outcomes = [await send(k) for k in range(3)]
        await close()
        server.close()
        await server.wait_closed()
        return outcomes

    assert asyncio.run(main()) == [loadgen.OK, loadgen.OK, loadgen.OK]
