"""Admission before the body is read: a burst of large uploads is refused from the headers
(429 / RESOURCE_EXHAUSTED), so the server's memory stays under the bound its settings give
(`Settings.request_memory_bound`), and every request is answered 200 or 429."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import psutil
import pytest
from server_harness import Server, pb, pb_grpc

from benchmarks.uploads import PeakRSS, padded_jpeg
from service.settings import Settings

pytestmark = pytest.mark.reliability

LIMITS = {"max_concurrent_requests": 4, "max_body_bytes": 20 * 2**20, "max_pixels": 2_000_000,
          "inference_delay_ms": 100, "max_batch_size": 2, "preprocess_workers": 1}
UPLOADS = 40


@pytest.fixture(scope="module")
def guarded(model_dir, tmp_path_factory):
    srv = Server(model_dir, tmp_path_factory.mktemp("admission"), **LIMITS)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.mark.timeout(120)
def test_large_upload_burst_is_refused_before_buffering(guarded: Server) -> None:
    bound = Settings(**LIMITS).request_memory_bound(input_size=32)  # the tiny model's input
    body = padded_jpeg(LIMITS["max_body_bytes"] - 4096)
    rest_parts = {"image": ("big.jpg", body, "image/jpeg")}
    grpc_body = padded_jpeg(LIMITS["max_body_bytes"] // 4)
    idle = psutil.Process(guarded.proc.pid).memory_info().rss

    async def rest_burst() -> list[int]:
        limits = httpx.Limits(max_connections=UPLOADS)
        async with httpx.AsyncClient(base_url=guarded.url, timeout=60, limits=limits) as client:
            replies = await asyncio.gather(*(
                client.post("/v1/tag", files=rest_parts, data={"labels": ["sky", "dog"]})
                for _ in range(UPLOADS)))
        for reply in replies:
            if reply.status_code == 429:
                assert reply.json()["error"]["code"] == "queue_full", reply.text
                assert reply.headers["retry-after"] == "1"
        return [r.status_code for r in replies]

    async def grpc_burst() -> list[str]:
        async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
            stub = pb_grpc.TaggerStub(channel)
            request = pb.TagRequest(image=grpc_body, labels=["sky", "dog"])

            async def call() -> str:
                try:
                    await stub.Tag(request, timeout=60)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
            return list(await asyncio.gather(*(call() for _ in range(UPLOADS))))

    async def both() -> tuple[list[int], list[str]]:
        return await asyncio.gather(rest_burst(), grpc_burst())

    with PeakRSS(guarded.proc.pid) as rss:
        rest, over_grpc = asyncio.run(both())
    summary = {"rest": {s: rest.count(s) for s in set(rest)},
               "grpc": {s: over_grpc.count(s) for s in set(over_grpc)},
               "peak_over_idle_mib": round((rss.peak - idle) / 2**20, 1),
               "bound_mib": round(bound / 2**20, 1)}
    print("admission:", summary)
    assert set(rest) <= {200, 429} and rest.count(429) > 0, summary
    # gRPC's own limit (maximum_concurrent_rpcs) refuses before any handler runs, so its
    # RESOURCE_EXHAUSTED carries grpc's text, not the error-code / retry-after metadata
    assert set(over_grpc) <= {"OK", "RESOURCE_EXHAUSTED"}, summary
    assert over_grpc.count("RESOURCE_EXHAUSTED") > 0, summary
    assert rss.peak - idle <= bound, summary
    with httpx.Client(base_url=guarded.url, timeout=30) as client:  # and it serves on
        ok = client.post("/v1/tag", files={"image": ("s.jpg", padded_jpeg(10_000))},
                         data={"labels": ["sky"]})
        assert ok.status_code == 200, ok.text
