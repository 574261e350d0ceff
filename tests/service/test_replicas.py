"""Two real server processes on loopback sharing one vocabulary directory, as two replicas
sharing a volume do: a vocabulary PUT, replaced or deleted through one is what the other
serves, and a reader never sees a half-written one."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest
from server_harness import AUTH, Server, pb, pb_grpc, tag_multipart

from artifact.testing import image_bytes

KEY = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def replicas(model_dir, tmp_path_factory):
    """Replica `a` re-reads the shared directory at most once a second (the default), `b` on
    every lookup; both on the same directory."""
    shared = tmp_path_factory.mktemp("shared") / "vocabularies"
    a = Server(model_dir, tmp_path_factory.mktemp("a"), api_key="test-key", vocab_dir=shared)
    b = Server(model_dir, tmp_path_factory.mktemp("b"), api_key="test-key", vocab_dir=shared,
               vocab_refresh_s=0)
    try:
        a.wait_ready()
        b.wait_ready()
        with httpx.Client(base_url=a.url, headers=KEY, timeout=30) as ha, \
                httpx.Client(base_url=b.url, headers=KEY, timeout=30) as hb:
            yield a, b, ha, hb
    finally:
        a.stop()
        b.stop()


def _tagged(client: httpx.Client, name: str) -> dict[str, float]:
    r = tag_multipart(client, image_bytes(), [], vocabulary=name)
    assert r.status_code == 200, r.text
    return {t["label"]: t["score"] for t in r.json()["tags"]}


def test_put_replace_delete_through_one_replica_is_served_by_the_other(replicas):
    a, b, ha, hb = replicas
    assert hb.get("/v1/vocabularies/shared-pets").status_code == 404
    first = ["dog", "cat", "parrot"]
    assert ha.put("/v1/vocabularies/shared-pets", json={"labels": first}).status_code == 201
    # b looks at the directory on every lookup: the very next request knows the name
    assert hb.get("/v1/vocabularies/shared-pets").json()["labels"] == first
    by_b, by_a = _tagged(hb, "shared-pets"), _tagged(ha, "shared-pets")
    assert set(by_b) == set(first) and by_b == pytest.approx(by_a, abs=1e-4)
    with b.channel() as channel:
        reply = pb_grpc.TaggerStub(channel).Tag(
            pb.TagRequest(image=image_bytes(), vocabulary="shared-pets"), metadata=AUTH)
    assert {t.label for t in reply.tags} == set(first)

    # replacement: b drops the old labels and their embeddings
    second = ["horse", "a red car"]
    assert ha.put("/v1/vocabularies/shared-pets", json={"labels": second}).status_code == 200
    assert set(_tagged(hb, "shared-pets")) == set(second)
    assert _tagged(hb, "shared-pets") == pytest.approx(_tagged(ha, "shared-pets"), abs=1e-4)

    # a PUT through b of a name a has not looked up yet is not "new" to b: it exists on disk
    assert hb.put("/v1/vocabularies/shared-pets", json={"labels": first}).status_code == 200

    assert ha.delete("/v1/vocabularies/shared-pets").status_code == 204
    assert hb.get("/v1/vocabularies/shared-pets").status_code == 404
    assert tag_multipart(hb, image_bytes(), [], vocabulary="shared-pets").status_code == 404
    assert hb.delete("/v1/vocabularies/shared-pets").status_code == 404


def test_a_replica_that_caches_sees_the_change_after_its_refresh_interval(replicas):
    """a re-reads at most once a second: b's PUT reaches it by then (polled, bounded)."""
    a, b, ha, hb = replicas
    assert hb.put("/v1/vocabularies/from-b", json={"labels": ["tree", "sofa"]}).status_code == 201
    deadline = time.monotonic() + 15
    while ha.get("/v1/vocabularies/from-b").status_code == 404:
        assert time.monotonic() < deadline, "a never saw b's vocabulary"
        time.sleep(0.1)
    assert "from-b" in ha.get("/v1/vocabularies").json()["vocabularies"]
    assert set(_tagged(ha, "from-b")) == {"tree", "sofa"}
    assert hb.delete("/v1/vocabularies/from-b").status_code == 204


def test_no_torn_reads_while_another_replica_replaces(replicas):
    """a replaces one vocabulary back and forth while b reads and tags by it: every answer
    is one whole version, never a mix or a parse failure."""
    a, b, ha, hb = replicas
    small = ["dog", "cat"]
    large = [f"thing number {i}" for i in range(400)]  # a larger file: a slower write
    assert ha.put("/v1/vocabularies/flip", json={"labels": small}).status_code == 201
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=a.url, headers=KEY, timeout=30) as client:
            for i in range(40):
                r = client.put("/v1/vocabularies/flip", json={"labels": (large, small)[i % 2]})
                if r.status_code != 200:
                    errors.append(f"PUT {r.status_code} {r.text}")
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        reads = 0
        while not stop.is_set() and reads < 400:
            reads += 1
            got = hb.get("/v1/vocabularies/flip")
            assert got.status_code == 200, got.text
            labels = got.json()["labels"]
            assert labels in (small, large), labels[:5]
            seen.add(len(labels))
            if reads % 4 == 0:
                r = tag_multipart(hb, image_bytes(), [], vocabulary="flip", top_k=1000)
                assert r.status_code == 200, r.text
                assert {t["label"] for t in r.json()["tags"]} in (set(small), set(large))
    finally:
        thread.join(60)
    assert not errors, errors
    assert seen == {len(small), len(large)}, "b never saw one of the two versions"


def _closed_after_ready(states: list) -> bool:
    ready = grpc.ChannelConnectivity.READY
    return ready in states and grpc.ChannelConnectivity.IDLE in states[states.index(ready):]


def test_grpc_connections_are_aged_so_clients_re_resolve(model_dir, tmp_path):
    """With ML2P_GRPC_MAX_CONNECTION_AGE_S the server closes a client's connection (GOAWAY)
    after that age, so a round_robin client of a headless Service resolves the name again and
    reaches replicas added since; calls after it still succeed (on a new connection)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = Server(model_dir, tmp_path, grpc_max_connection_age_s=1).wait_ready()
    try:
        states: list = []
        with server.channel() as channel:
            channel.subscribe(states.append)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
            deadline = time.monotonic() + 15
            while not _closed_after_ready(list(states)):  # callbacks come on another thread
                assert time.monotonic() < deadline, f"connection never closed: {states}"
                time.sleep(0.1)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    finally:
        server.stop()
