"""Label embedding never stalls tagging, through a real server whose text graph is made slow.

`label_delay_ms` adds that much time per label embedded (a stand-in for the real MiniLM's
~1.5 ms per label on this CPU), with one label worker, so the order in which label work runs
decides who waits.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from server_harness import Server

from artifact.testing import image_bytes

DELAY_MS = 2.0
VOCABULARY = [f"word{i} thing{i % 7}" for i in range(1500)]  # ~3 s of text-graph time


@pytest.fixture(scope="module")
def slow_labels(model_dir, tmp_path_factory):
    srv = Server(model_dir, tmp_path_factory.mktemp("slow-labels"), label_delay_ms=DELAY_MS,
                 label_workers=1, max_vocabulary_labels=5000)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def _misses(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ml2p_label_cache_misses_total "):
            return float(line.split()[1])
    raise AssertionError("ml2p_label_cache_misses_total not exported")


def test_new_labels_are_answered_while_a_vocabulary_is_embedded(slow_labels: Server) -> None:
    """A vocabulary is embedded in chunks at a lower priority: a request with new labels,
    sent while ~3 s of vocabulary work is queued, meets a 1 s deadline."""
    with httpx.Client(base_url=slow_labels.url, timeout=30) as client:
        stored = client.put("/v1/vocabularies/big", json={"labels": VOCABULARY})
        assert stored.status_code in (200, 201), stored.text
        answered = client.post("/v1/tag", files={"image": ("i.png", image_bytes())},
                               data={"labels": ["lone tree", "red boat"], "timeout_ms": "1000"})
        assert answered.status_code == 200, answered.text
        assert {t["label"] for t in answered.json()["tags"]} == {"lone tree", "red boat"}
        # the vocabulary was still being embedded: the request did not wait for all of it
        by_name = client.post("/v1/tag", files={"image": ("i.png", image_bytes())},
                              data={"vocabulary": "big", "top_k": "3"})
        assert by_name.status_code == 200, by_name.text


def test_concurrent_misses_of_the_same_labels_embed_once(slow_labels: Server) -> None:
    labels = ["dark water", "bright sun", "green grass", "white beach", "black road"]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=10)
        async with httpx.AsyncClient(base_url=slow_labels.url, timeout=30,
                                     limits=limits) as client:
            return await asyncio.gather(*(
                client.post("/v1/tag", files={"image": ("i.png", image_bytes())},
                            data={"labels": labels}) for _ in range(10)))

    with httpx.Client(base_url=slow_labels.url, timeout=30) as client:
        before = _misses(client)
        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 10, responses[0].text
        assert _misses(client) - before == len(labels)  # the text graph ran once per label
    label_gflops = [r.json()["gflops"]["labels"] for r in responses]
    assert sum(g > 0 for g in label_gflops) >= 1  # whoever embedded them reports the work
    scores = {tuple(t["score"] for t in r.json()["tags"]) for r in responses}
    assert len(scores) == 1  # everyone got the same vectors
