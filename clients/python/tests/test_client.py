"""ml2p-client against a real server, over REST and gRPC, from the installed wheel."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import ml2p_client
import pytest
from conftest import KEY, Server
from ml2p_client import AsyncClient, Client, ML2PError, Retry

LABELS = ["dog", "a red car", "sky", "Dog", "🐶🐱"]


def test_the_wheel_is_what_is_imported():
    where = Path(ml2p_client.__file__).resolve()
    assert "site-packages" in where.parts, where  # not the source tree
    from ml2p_client._generated import tagger_pb2

    assert "Embed" in tagger_pb2.DESCRIPTOR.services_by_name["Tagger"].methods_by_name
    with pytest.raises(ImportError):
        __import__("grpc_tools")  # no grpcio-tools at run time


@pytest.fixture(params=["rest", "grpc"])
def client(request, server) -> Client:
    url = server.url if request.param == "rest" else server.grpc_url
    with Client(url, api_key=KEY) as c:
        assert c.protocol == request.param
        yield c


def test_tag_paths_bytes_and_pil_images(client, photo):
    from PIL import Image

    by_path = client.tag(photo, LABELS)
    assert by_path.source == str(photo)
    assert sorted(t.label for t in by_path.tags) == sorted(["dog", "a red car", "sky", "🐶🐱"])
    assert by_path.duplicates_removed == ["Dog"]
    assert [(w.label, w.code) for w in by_path.warnings] == [("🐶🐱", "unknown_tokens")]
    assert all(t.probability is not None for t in by_path.tags)
    assert by_path.gflops["total"] > 0 and by_path.model.startswith("tiny-test@")
    by_bytes = client.tag(photo.read_bytes(), LABELS)
    assert [t.score for t in by_bytes.tags] == pytest.approx([t.score for t in by_path.tags])
    with Image.open(photo) as image:
        image.load()
        assert client.tag(image, LABELS).top(1) == by_path.top(1)
    top = client.tag(photo, LABELS, top_k=2)
    assert top.top() == by_path.top(2)
    cut = (by_path.tags[0].probability + by_path.tags[1].probability) / 2
    assert client.tag(photo, LABELS, min_probability=cut).top() == by_path.top(1)


def test_tag_many_in_order_with_a_progress_bar(client, photo, tmp_path, capsys):
    from PIL import Image

    paths = []
    for i, colour in enumerate([(10, 200, 10), (200, 30, 30), (20, 20, 220)] * 3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        paths.append(path)
    results = client.tag_many(paths, ["dog", "sky"], concurrency=4, progress=True)
    assert [r.source for r in results] == [str(p) for p in paths]
    singles = [client.tag(p, ["dog", "sky"]) for p in paths[:3]]
    for got, alone in zip(results[:3], singles, strict=True):
        assert [t.score for t in got.tags] == pytest.approx([t.score for t in alone.tags])
    assert "9/9" in capsys.readouterr().err


def test_vocabularies(client, photo, server):
    name = f"client-{client.protocol}"
    stored = client.put_vocabulary(name, ["dog", "sky", "dog"])
    assert stored.labels == ["dog", "sky"] and stored.duplicates_removed == ["dog"]
    assert client.get_vocabulary(name).labels == ["dog", "sky"]
    assert sorted(t.label for t in client.tag(photo, vocabulary=name).tags) == ["dog", "sky"]
    if client.protocol == "rest":
        assert name in client.list_vocabularies()
    client.delete_vocabulary(name)
    with pytest.raises(ML2PError) as info:
        client.get_vocabulary(name)
    assert info.value.code == "not_found" and not info.value.retryable


def test_embed_then_score_is_the_tag_answer(client, photo, tmp_path):
    numpy = pytest.importorskip("numpy")
    embedded = client.embed([photo, photo.read_bytes()], dtype="float32")
    assert embedded.model.precision == "fp32" and len(embedded.items) == 2
    assert embedded.items[0].source == str(photo) and embedded.items[1].source is None
    assert embedded.items[0].array().shape == embedded.items[0].shape
    rescored = client.score(embedded, ["dog", "a red car", "sky"])
    tagged = client.tag(photo, ["dog", "a red car", "sky"])
    assert rescored[0].top() == tagged.top()
    assert [t.score for t in rescored[0].tags] == pytest.approx([t.score for t in tagged.tags],
                                                                abs=1e-5)
    # the README recipe: kept in a .npz with the model's identity, loaded, re-scored
    from ml2p_client import Embedding, Embeddings, VectorsModel

    stored = client.embed([photo])
    path = tmp_path / "photos.npz"
    numpy.savez(path, vectors=numpy.stack([e.array() for e in stored.items]),
                paths=[str(photo)], **stored.model.model_dump())
    saved = numpy.load(path)
    model = VectorsModel(**{k: str(saved[k]) for k in ("name", "version", "precision")})
    again = Embeddings(model=model, items=[
        Embedding(shape=v.shape, dtype="float16", data=v.astype("<f2").tobytes(), source=p)
        for v, p in zip(saved["vectors"], saved["paths"], strict=True)])
    (reloaded,) = client.score(again, ["dog", "a red car", "sky"], top_k=1)
    assert reloaded.source == str(photo) and reloaded.top(1) == tagged.top(1)
    other = embedded.model_copy(update={"model": embedded.model.model_copy(
        update={"version": "0.0.0-elsewhere"})})
    with pytest.raises(ML2PError) as info:
        client.score(other, ["dog"])
    assert info.value.code == "vectors_mismatch" and "0.0.0-elsewhere" in info.value.message


def test_models_and_readiness(client):
    (model,) = client.models()
    assert model.name == "tiny-test" and model.calibrated and model.state == "ready"
    assert model.details["groups"] == model.groups
    assert client.ready()


def test_api_key_is_required(server, photo):
    for url in (server.url, server.grpc_url):
        with Client(url, api_key="wrong") as client, pytest.raises(ML2PError) as info:
            client.tag(photo, ["dog"])
        assert info.value.code == "unauthenticated" and not info.value.retryable


def test_relevance_maps(client, photo):
    from PIL import Image

    plain = client.tag(photo, LABELS)
    assert all(t.relevance is None for t in plain.tags)
    explained = client.tag(photo, LABELS, explain=True, explain_top_k=2, explain_png=True)
    assert explained.top() == plain.top()
    first, second, *rest = explained.tags
    assert all(t.relevance is None for t in rest)
    for tag in (first, second):
        grid = tag.relevance.array()
        assert grid.shape == (tag.relevance.rows, tag.relevance.cols) == (4, 4)  # tiny model
        with Image.open(io.BytesIO(tag.relevance.png)) as image:
            assert image.size == (4, 4) and image.mode == "L"
    assert explained.gflops["explain"] > 0 and "explain" in explained.timings_ms
    with pytest.raises(ML2PError) as info:
        client.tag(photo, LABELS, explain=True, explain_top_k=1000)
    assert info.value.field == "explain_top_k"


def test_bad_requests_name_the_field(client, photo):
    with pytest.raises(ML2PError) as info:
        client.tag(photo, ["dog"], min_probability=50)
    assert info.value.field == "min_probability" and info.value.status in (422,
                                                                          "INVALID_ARGUMENT")
    with pytest.raises(ML2PError) as info:
        client.tag(photo.parent / "missing.png", ["dog"])
    assert info.value.code == "invalid_image" and "missing.png" in info.value.message


@pytest.fixture(scope="module")
def busy(model, tmp_path_factory) -> Server:
    """A server that admits one request at a time and takes 1.5 s per image."""
    srv = Server(model, tmp_path_factory.mktemp("busy"), max_concurrent_requests=1,
                 inference_delay_ms=1500, retry_after_s=1).wait_ready()
    yield srv
    srv.stop()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_retries_honour_retry_after_and_deadlines_hold(busy, photo, protocol):
    url = busy.url if protocol == "rest" else busy.grpc_url
    with Client(url, api_key=KEY, timeout=30) as blocker:
        hold = threading.Thread(target=blocker.tag, args=(photo, ["dog"]))
        hold.start()
        time.sleep(0.5)  # the one admitted request is running
        with Client(url, api_key=KEY, retry=Retry(attempts=1)) as once, \
                pytest.raises(ML2PError) as info:
            once.tag(photo, ["dog"])
        assert info.value.status in (429, "RESOURCE_EXHAUSTED") and info.value.retryable
        # REST's 429 carries Retry-After; gRPC's concurrent-call limit answers before the
        # servicer runs, without the retry-after trailer, so the client backs off on its own
        assert info.value.retry_after == (1 if protocol == "rest" else None)
        started = time.monotonic()
        with Client(url, api_key=KEY, retry=Retry(attempts=5, max_elapsed=20)) as patient:
            result = patient.tag(photo, ["dog"])  # refused, waits Retry-After, then answered
        assert result.top() == ["dog"] and time.monotonic() - started >= 0.9
        hold.join()
    with Client(url, api_key=KEY, retry=Retry(attempts=1)) as hurried, \
            pytest.raises(ML2PError) as info:
        hurried.tag(photo, ["dog"], timeout=0.3)
    assert info.value.code in ("deadline_exceeded", "DEADLINE_EXCEEDED".lower())


def test_async_client(server, photo):
    async def run() -> list:
        async with AsyncClient(server.grpc_url, api_key=KEY) as client:
            return await asyncio.gather(client.tag(photo, ["dog"]), client.tag(photo, ["sky"]))

    first, second = asyncio.run(run())
    assert first.top() == ["dog"] and second.top() == ["sky"]


@pytest.mark.parametrize("scheme", ["rest", "grpc"])
def test_tls_is_verified(model, pki, photo, tmp_path, scheme):
    import ssl

    tls = {"tls_cert": pki["cert"], "tls_key": pki["key"]}
    srv = Server(model, tmp_path, tls=tls).wait_ready(
        verify=ssl.create_default_context(cafile=str(pki["ca"])))
    try:
        url = srv.url if scheme == "rest" else srv.grpc_url
        with Client(url, api_key=KEY, verify=str(pki["ca"])) as client:
            assert client.tag(photo, ["dog"]).top() == ["dog"]
        # by default the client trusts only the system CAs: the test CA's server is refused
        with Client(url, api_key=KEY, retry=Retry(attempts=1), timeout=5) as client, \
                pytest.raises(ML2PError) as info:
            client.tag(photo, ["dog"])
        assert info.value.code in ("transport", "unavailable")
    finally:
        srv.stop()

