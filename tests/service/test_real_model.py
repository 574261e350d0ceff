"""The shipped model through the real server: an image's answer does not depend on the batch
it ran in (dynamic batching must not change scores)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from server_harness import Server

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "zoo" / "default"
VOC_VAL = Path(os.environ.get("ML2P_VOC_ROOT", REPO.parent / "shared/data/voc2007")) / "images/val"
LABELS = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
          "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
          "train", "tv monitor", "a red car", "people on a beach"]
TOL = 1e-5


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not (DEFAULT / "manifest.json").is_file():
        pytest.skip("models/zoo/default is not built (`make model`; `make test` builds it)")
    # a slow engine makes the concurrent requests queue, so they run in batches
    srv = Server(DEFAULT, tmp_path_factory.mktemp("real"), max_batch_size=8,
                 inference_delay_ms=300, intra_op_threads=2)
    try:
        yield srv.wait_ready(timeout=120)
    finally:
        srv.stop()


def _photos() -> list[bytes]:
    paths = sorted(VOC_VAL.glob("*.jpg"))[:8]
    if len(paths) < 8:
        pytest.skip(f"VOC images/val not found under {VOC_VAL}")
    return [p.read_bytes() for p in paths]


def test_batched_and_unbatched_answers_are_identical(real: Server) -> None:
    photos = _photos()

    def scores(response: httpx.Response) -> dict[str, float]:
        assert response.status_code == 200, response.text
        return {t["label"]: t["score"] for t in response.json()["tags"]}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=real.url, timeout=60,
                                     limits=httpx.Limits(max_connections=8)) as client:
            return await asyncio.gather(*(
                client.post("/v1/tag", files={"image": ("p.jpg", data)},
                            data={"labels": LABELS}) for data in photos))

    batched = asyncio.run(together())
    sizes = [r.json()["batch_size"] for r in batched]
    assert max(sizes) > 1, sizes  # the comparison below is about batches
    with httpx.Client(base_url=real.url, timeout=60) as client:
        alone = [client.post("/v1/tag", files={"image": ("p.jpg", data)},
                             data={"labels": LABELS}) for data in photos]
    assert all(r.json()["batch_size"] == 1 for r in alone)
    worst = 0.0
    for in_batch, by_itself in zip(batched, alone, strict=True):
        a, b = scores(in_batch), scores(by_itself)
        assert a.keys() == b.keys() == set(LABELS)
        worst = max(worst, *(abs(a[k] - b[k]) for k in LABELS))
    print(f"batch sizes {sizes}: max |score difference| {worst:.2e}")
    assert worst <= TOL
