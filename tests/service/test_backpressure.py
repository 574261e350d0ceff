"""Batching, queue limits and deadlines through a real server whose engine is made slow.

The server runs with `inference_delay_ms` (every image batch sleeps that long), so requests
overlap deterministically even with the tiny model.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from server_harness import Server, pb, pb_grpc

from artifact.testing import image_bytes

DELAY_MS = 150
LABELS = ["dog", "red car", "sky", "person", "tree"]


@pytest.fixture(scope="module")
def slow(model_dir, tmp_path_factory):
    # admission well above the image capacity (12): these tests are about the queue's 429s
    srv = Server(model_dir, tmp_path_factory.mktemp("slow"), inference_delay_ms=DELAY_MS,
                 max_batch_size=4, max_queue_size=8, retry_after_s=2, max_concurrent_requests=64)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def _post(client: httpx.Client | httpx.AsyncClient, image: bytes, **fields):
    return client.post("/v1/tag", files={"image": ("i.png", image)},
                       data={"labels": LABELS, **{k: str(v) for k, v in fields.items()}})


async def _concurrently(url: str, images: list[bytes], **fields) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(images))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(_post(client, image, **fields) for image in images))


def _scores(body: dict) -> dict[str, float]:
    return {t["label"]: t["score"] for t in body["tags"]}


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_concurrent_requests_share_batches_with_identical_results(slow):
    images = [image_bytes((30 * i, 200 - 20 * i, 90)) for i in range(8)]
    with httpx.Client(base_url=slow.url, timeout=30) as client:
        alone = [_post(client, image).json() for image in images]
    assert all(body["batch_size"] == 1 for body in alone)  # idle engine: never waits
    batched = asyncio.run(_concurrently(slow.url, images))
    assert all(r.status_code == 200 for r in batched), [r.text for r in batched]
    sizes = [r.json()["batch_size"] for r in batched]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 4  # max_batch_size
    for single, shared in zip(alone, batched, strict=True):
        a, b = _scores(single), _scores(shared.json())
        assert a.keys() == b.keys()
        assert np.allclose([a[k] for k in a], [b[k] for k in a], atol=1e-5)
        assert [t["label"] for t in single["tags"]] == [t["label"] for t in shared.json()["tags"]]
    count = _metric(slow.url, "ml2p_batch_size_count")
    assert _metric(slow.url, "ml2p_batch_size_sum") / count > 1


def test_queue_full_is_429_with_retry_after(slow):
    responses = asyncio.run(_concurrently(slow.url, [image_bytes()] * 30))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 8 and statuses.count(429) >= 1, statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "2"
    assert rejected.json()["error"]["code"] == "queue_full"


def test_deadline_is_504(slow):
    with httpx.Client(base_url=slow.url, timeout=30) as client:
        r = _post(client, image_bytes(), timeout_ms=DELAY_MS / 3)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "deadline_exceeded"


def test_server_deadline_caps_every_request(model_dir, tmp_path_factory):
    """`request_timeout_s` applies without a caller deadline and caps a longer one."""
    srv = Server(model_dir, tmp_path_factory.mktemp("strict"), inference_delay_ms=DELAY_MS,
                 request_timeout_s=DELAY_MS / 3000)
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            for fields in ({}, {"timeout_ms": 20_000}):
                r = _post(client, image_bytes(), **fields)
                assert r.status_code == 504, (fields, r.text)
                assert r.json()["error"]["code"] == "deadline_exceeded"
                assert f"{DELAY_MS / 3000:g}s" in r.json()["error"]["message"]
        with srv.channel() as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=image_bytes(), labels=LABELS),
                                            timeout=30)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert httpx.get(f"{srv.url}/livez").status_code == 200
    finally:
        srv.stop()


def test_grpc_resource_exhausted_and_deadline(slow):
    png = image_bytes()
    with slow.channel() as channel:
        stub = pb_grpc.TaggerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Tag(pb.TagRequest(image=png, labels=LABELS), timeout=DELAY_MS / 3000)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        futures = [stub.Tag.future(pb.TagRequest(image=png, labels=LABELS), timeout=30)
                   for _ in range(30)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailer = dict(error.trailing_metadata())
                    assert trailer["error-code"] == "queue_full"
                    assert int(trailer["retry-after"]) >= 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
