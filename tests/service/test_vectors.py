"""Embed once, re-score later, through the real server: `/v1/embed` + `/v1/score` and gRPC
`Embed` + `Score` give the ranking `/v1/tag` gives; vectors of another model, version or
precision variant are refused naming both; malformed vectors are a 422 naming the item."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
from server_harness import AUTH, error_of, pb, pb_grpc, tag_multipart

from artifact.testing import image_bytes

LABELS = ["dog", "cat", "a red car", "Dog", "🐶🐱"]


def _photos() -> list[bytes]:
    return [image_bytes(color) for color in ((200, 30, 30), (30, 160, 40), (20, 40, 220))]


def _embed(http, photos: list[bytes], dtype: str = "float16") -> dict:  # noqa: ANN001
    r = http.post("/v1/embed", files=[("images", (f"{i}.png", p)) for i, p in enumerate(photos)],
                  data={"dtype": dtype})
    assert r.status_code == 200, r.text
    return r.json()


def _score(http, embedded: dict, **fields: object):  # noqa: ANN001, ANN202
    vectors = [{k: e[k] for k in ("shape", "dtype", "data")} for e in embedded["embeddings"]]
    return http.post("/v1/score", json={"model": embedded["model"], "embeddings": vectors,
                                        **fields})


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_score_of_stored_vectors_is_the_tag_answer(http, manifest, dtype, tol):
    photos = _photos()
    embedded = _embed(http, photos, dtype)
    assert embedded["model"]["name"] == manifest["name"]
    assert embedded["model"]["version"] == manifest["version"]
    assert embedded["model"]["precision"] == "fp32"
    assert len(embedded["embeddings"]) == len(photos)
    first = embedded["embeddings"][0]
    assert first["shape"] == [manifest["groups"], manifest["dim"]] and first["dtype"] == dtype
    assert len(base64.b64decode(first["data"])) == manifest["groups"] * manifest["dim"] * (
        2 if dtype == "float16" else 4)
    assert embedded["gflops"]["image"] == pytest.approx(len(photos) * manifest["gflops"]["image"])

    scored = _score(http, embedded, labels=LABELS)
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert body["gflops"]["image"] == 0 and body["duplicates_removed"] == ["Dog"]
    assert [w["label"] for w in body["warnings"]] == ["🐶🐱"]
    for photo, result in zip(photos, body["results"], strict=True):
        tagged = tag_multipart(http, photo, LABELS).json()["tags"]
        assert [t["label"] for t in result["tags"]] == [t["label"] for t in tagged] or \
            dtype == "float16"  # ties within fp16 rounding may swap
        got = {t["label"]: t for t in result["tags"]}
        for t in tagged:
            assert got[t["label"]]["score"] == pytest.approx(t["score"], abs=tol)
            assert got[t["label"]]["probability"] == pytest.approx(t["probability"], abs=tol)
    cut = _score(http, embedded, labels=LABELS[:3], top_k=2, min_probability=0.0).json()
    assert all(len(r["tags"]) == 2 for r in cut["results"])


def test_vectors_of_another_model_or_variant_are_refused(http, manifest):
    embedded = _embed(http, _photos()[:1])
    for change in ({"version": "9.9.9"}, {"precision": "int8"}, {"name": "other"}):
        other = {**embedded, "model": {**embedded["model"], **change}}
        r = _score(http, other, labels=["dog"])
        assert r.status_code == 409, r.text
        error = error_of(r)
        assert error["code"] == "vectors_mismatch" and error["field"] == "model"
        theirs = "{name}@{version} ({precision})".format(**other["model"])
        ours = "{name}@{version} ({precision})".format(**embedded["model"])
        assert theirs in error["message"] and ours in error["message"]


def test_malformed_vectors_are_named(http, manifest):
    embedded = _embed(http, _photos()[:1], "float32")
    good = embedded["embeddings"][0]
    short = {**good, "data": base64.b64encode(b"\0" * 12).decode()}
    r = _score(http, {**embedded, "embeddings": [good, short]}, labels=["dog"])
    assert r.status_code == 422 and error_of(r)["field"] == "embeddings[1].data"
    wrong = {**good, "shape": [manifest["groups"] * manifest["dim"], 1]}
    r = _score(http, {**embedded, "embeddings": [wrong]}, labels=["dog"])
    assert r.status_code == 422 and error_of(r)["field"] == "embeddings"
    nan = {**good, "data": base64.b64encode(np.full(
        manifest["groups"] * manifest["dim"], np.nan, "<f4").tobytes()).decode()}
    r = _score(http, {**embedded, "embeddings": [nan]}, labels=["dog"])
    assert r.status_code == 422 and "NaN" in error_of(r)["message"]
    r = http.post("/v1/embed", files={"image": ("a.png", _photos()[0])},
                  data={"labels": "dog"})  # embed takes no labels: not silently dropped
    assert r.status_code == 422 and error_of(r)["field"] == "labels"


def test_grpc_embed_and_score_match_rest(server, http):
    photos = _photos()
    with server.channel() as channel:
        stub = pb_grpc.TaggerStub(channel)
        embedded = stub.Embed(pb.EmbedRequest(images=photos, dtype="float32"), metadata=AUTH,
                              timeout=30)
        assert len(embedded.embeddings) == len(photos)
        scored = stub.Score(pb.ScoreRequest(model=embedded.model,
                                            embeddings=embedded.embeddings, labels=LABELS),
                            metadata=AUTH, timeout=30)
        wrong = pb.VectorsModel(name=embedded.model.name, version="0.0.0-other",
                                precision=embedded.model.precision)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(model=wrong, embeddings=embedded.embeddings,
                                       labels=["dog"]), metadata=AUTH, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "0.0.0-other" in info.value.details()
    rest = _score(http, _embed(http, photos, "float32"), labels=LABELS).json()
    assert [w.label for w in scored.warnings] == ["🐶🐱"]
    for g, r in zip(scored.results, rest["results"], strict=True):
        assert [t.label for t in g.tags] == [t["label"] for t in r["tags"]]
        assert [t.score for t in g.tags] == pytest.approx([t["score"] for t in r["tags"]],
                                                          abs=1e-5)
