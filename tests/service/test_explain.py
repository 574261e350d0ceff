"""Relevance maps through the real server (REST and gRPC): shape, range, limits, and a model
exported without maps. The tiny test artifact's map graph is a stand-in with the real one's
outputs (artifact.testing); the maps' faithfulness to the score is tests/models'."""

from __future__ import annotations

import base64
import io

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import AUTH, Server, error_of, pb, pb_grpc, tag_multipart

from artifact.testing import image_bytes, write_tiny_artifact

LABELS = ["dog", "red car", "sky", "grass", "water", "city", "cat"]


@pytest.fixture(scope="module")
def no_maps(tmp_path_factory: pytest.TempPathFactory):
    """A server on an artifact exported without the relevance-map graph."""
    artifact = write_tiny_artifact(tmp_path_factory.mktemp("no-maps") / "artifact",
                                   explain=False)
    srv = Server(artifact, tmp_path_factory.mktemp("no-maps-server"), explain_max_maps=4)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def _check_map(relevance: dict, manifest: dict) -> np.ndarray:
    spec = manifest["explain"]
    assert (relevance["rows"], relevance["cols"]) == (spec["rows"], spec["cols"])
    values = np.asarray(relevance["values"], np.float64)
    assert values.shape == (spec["rows"] * spec["cols"],)
    assert np.isfinite(values).all() and np.isfinite(relevance["evidence"])
    assert np.ptp(values) > 0  # the cells of the test image differ
    return values


def test_rest_maps_for_the_first_tags_only(http, png, manifest):
    plain = tag_multipart(http, png, LABELS, top_k=5).json()
    body = tag_multipart(http, png, LABELS, top_k=5, explain="true", explain_top_k=3).json()
    # maps change nothing of the ranking
    assert [(t["label"], t["rank"]) for t in body["tags"]] == \
        [(t["label"], t["rank"]) for t in plain["tags"]]
    assert [t["score"] for t in body["tags"]] == pytest.approx(
        [t["score"] for t in plain["tags"]], abs=1e-5)
    assert all(t["relevance"] is None for t in plain["tags"])
    maps = [t["relevance"] for t in body["tags"]]
    assert all(m is not None for m in maps[:3]) and maps[3:] == [None, None]
    values = [_check_map(m, manifest) for m in maps[:3]]
    assert not np.allclose(values[0], values[1])  # each tag its own map
    assert all(m["png"] is None for m in maps[:3])
    # the extra work is counted: its own timing, and GFLOPs in the total
    assert body["timings_ms"]["explain"] >= 0 and plain["timings_ms"]["explain"] == 0
    gflops = body["gflops"]
    assert gflops["explain"] > 0 and plain["gflops"]["explain"] == 0
    assert gflops["total"] == pytest.approx(gflops["image"] + gflops["labels"]
                                            + gflops["scoring"] + gflops["explain"])


def test_rest_json_with_png(http, png, manifest):
    response = http.post("/v1/tag", json={
        "image": base64.b64encode(png).decode(), "labels": LABELS, "explain": True,
        "explain_png": True})
    assert response.status_code == 200, response.text
    tags = response.json()["tags"]
    assert sum(t["relevance"] is not None for t in tags) == 5  # the default explain_top_k
    first = tags[0]["relevance"]
    values = _check_map(first, manifest)
    image = Image.open(io.BytesIO(base64.b64decode(first["png"])))
    assert image.mode == "L" and image.size == (first["cols"], first["rows"])
    pixels = np.asarray(image).reshape(-1)
    assert pixels[values.argmax()] == 255 and pixels[values.argmin()] == 0


def test_batch_maps_per_image(http, manifest):
    images = [image_bytes((200, 30, 30)), image_bytes((20, 160, 40))]
    response = http.post("/v1/tag/batch", files=[("images", (f"{i}.png", data, "image/png"))
                                                  for i, data in enumerate(images)],
                         data={"labels": LABELS, "explain": "true", "explain_top_k": "2"})
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert [t["relevance"] is not None for t in result["tags"][:3]] == [True, True, False]


@pytest.mark.parametrize(("fields", "field"), [
    ({"explain_top_k": 21}, "explain_top_k"),
    ({"explain_top_k": 0}, "explain_top_k"),
])
def test_rest_limits(http, png, fields, field):
    response = tag_multipart(http, png, LABELS, explain="true", **fields)
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == field
    if fields["explain_top_k"] > 1:
        assert "20" in error["message"] and "relevance maps" in error["message"]


def test_rest_limit_counts_every_image(http):
    images = [image_bytes((200, 30, 30)), image_bytes((20, 160, 40))]
    response = http.post("/v1/tag/batch", files=[("images", (f"{i}.png", data, "image/png"))
                                                  for i, data in enumerate(images)],
                         data={"labels": LABELS, "explain": "true", "explain_top_k": "11"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == "explain_top_k" and "22 relevance maps" in error["message"]


def test_score_cannot_explain(http, png):
    embedded = http.post("/v1/embed", files={"image": ("a.png", png, "image/png")}).json()
    response = http.post("/v1/score", json={
        "model": embedded["model"], "labels": LABELS, "explain": True,
        "embeddings": [{k: e[k] for k in ("shape", "dtype", "data")}
                       for e in embedded["embeddings"]]})
    assert response.status_code == 422 and error_of(response)["field"] == "explain"


def test_grpc_maps(stub, png, manifest):
    response = stub.Tag(pb.TagRequest(image=png, labels=LABELS, explain=True, explain_top_k=2,
                                      explain_png=True), metadata=AUTH)
    explained = [t for t in response.tags if t.HasField("relevance")]
    assert [t.rank for t in explained] == [1, 2]
    for tag in explained:
        relevance = {"rows": tag.relevance.rows, "cols": tag.relevance.cols,
                     "values": list(tag.relevance.values), "evidence": tag.relevance.evidence}
        _check_map(relevance, manifest)
        assert Image.open(io.BytesIO(tag.relevance.png)).size == (tag.relevance.cols,
                                                                 tag.relevance.rows)
    assert response.gflops.explain > 0 and response.timings_ms.explain >= 0
    default = stub.Tag(pb.TagRequest(image=png, labels=LABELS, explain=True), metadata=AUTH)
    assert sum(t.HasField("relevance") for t in default.tags) == 5  # explain_top_k unset: 5


def test_grpc_limit(stub, png):
    with pytest.raises(grpc.RpcError) as info:
        stub.Tag(pb.TagRequest(image=png, labels=LABELS, explain=True, explain_top_k=21),
                 metadata=AUTH)
    trailer = dict(info.value.trailing_metadata() or ())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer["error-field"] == "explain_top_k" and "20" in info.value.details()


def test_models_say_whether_they_explain(http, no_maps):
    info = http.get("/v1/models").json()["models"][0]["explain"]
    assert info == {"available": True, "reason": None, "max_maps": 20, "rows": 4, "cols": 4}
    other = httpx.get(f"{no_maps.url}/v1/models", timeout=30).json()["models"][0]["explain"]
    assert other["available"] is False and "without relevance maps" in other["reason"]
    assert other["max_maps"] == 4


def test_a_model_without_maps_says_so(no_maps, png):
    with httpx.Client(base_url=no_maps.url, timeout=30) as http:
        response = tag_multipart(http, png, LABELS, explain="true")
        assert response.status_code == 422
        error = error_of(response)
        assert error["code"] == "explain_unavailable" and error["field"] == "explain"
        assert "without relevance maps" in error["message"]
        assert tag_multipart(http, png, LABELS).status_code == 200  # without explain, as ever
    with no_maps.channel() as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=png, labels=LABELS, explain=True))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["error-code"] == "explain_unavailable"
