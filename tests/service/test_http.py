"""REST API through the real server: every endpoint and every error of the service contract."""

from __future__ import annotations

import base64
import io
import json
import os
import zlib

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import AUTH, error_of, pb, tag_multipart

from artifact.testing import image_bytes

LABELS = ["dog", "red car", "sky", "person"]


def _png(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _scores(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {t["label"]: t["score"] for t in response.json()["tags"]}


# --- tagging -----------------------------------------------------------------------------
def test_tag_multipart_response_shape(http, png, manifest):
    r = tag_multipart(http, png, LABELS)
    body = r.json()
    assert r.status_code == 200, body
    assert body["model"] == {"name": manifest["name"], "version": manifest["version"]}
    assert [t["rank"] for t in body["tags"]] == [1, 2, 3, 4]
    scores = [t["score"] for t in body["tags"]]
    assert scores == sorted(scores, reverse=True)
    assert {t["label"] for t in body["tags"]} == set(LABELS)
    has_calibration = manifest.get("calibration") is not None
    assert all((t["probability"] is not None) == has_calibration for t in body["tags"])
    assert set(body["timings_ms"]) == {"decode", "preprocess", "queue", "inference", "labels",
                                       "scoring", "explain", "total"}
    assert body["batch_size"] >= 1
    g = body["gflops"]
    assert g["image"] == pytest.approx(manifest["gflops"]["image"])
    assert g["scoring"] == pytest.approx(2 * manifest["groups"] * manifest["dim"] * 4 / 1e9)
    assert g["total"] == pytest.approx(g["image"] + g["labels"] + g["scoring"])


def test_labels_as_json_array_alias_and_json_body_agree(http, png):
    multipart = _scores(tag_multipart(http, png, LABELS))
    one_field = http.post("/tag", files={"image": ("x.png", png)},
                          data={"labels_json": json.dumps(LABELS)})
    as_json = http.post("/v1/tag", json={"image": base64.b64encode(png).decode(),
                                         "labels": LABELS})
    data_url = http.post("/v1/tag", json={
        "image": "data:image/png;base64," + base64.b64encode(png).decode(), "labels": LABELS})
    assert _scores(one_field) == multipart == _scores(as_json) == _scores(data_url)


def test_labels_echoed_exactly_and_scores_independent(http, png):
    odd = ["  Red   CAR ", "dog"]
    tags = tag_multipart(http, png, odd).json()["tags"]
    assert {t["label"] for t in tags} == set(odd)
    alone = _scores(tag_multipart(http, png, ["dog"]))["dog"]
    # (embedding batch composition may move the last float bits, nothing more)
    assert _scores(tag_multipart(http, png, ["dog", *LABELS[1:]]))["dog"] == pytest.approx(
        alone, abs=1e-6)
    # normalisation is for the cache key only: same score as the plain spelling
    assert _scores(tag_multipart(http, png, ["red car"]))["red car"] == pytest.approx(
        {t["label"]: t["score"] for t in tags}["  Red   CAR "], abs=1e-6)


def test_duplicates_removed_and_reported(http, png):
    body = tag_multipart(http, png, ["dog", "Dog", "sky", "dog "]).json()
    assert [t["label"] for t in body["tags"]].count("dog") == 1
    assert len(body["tags"]) == 2
    assert body["duplicates_removed"] == ["Dog", "dog "]


def test_top_k_and_cut_offs(http, png):
    full = tag_multipart(http, png, LABELS).json()["tags"]
    assert full[0]["probability"] is not None  # the test model is calibrated
    top = tag_multipart(http, png, LABELS, top_k=2).json()["tags"]
    assert top == full[:2]
    for field, key in (("min_probability", "probability"), ("min_score", "score"),
                       ("threshold", "probability")):  # threshold: min_probability's old name
        cut = (full[1][key] + full[2][key]) / 2
        kept = tag_multipart(http, png, LABELS, **{field: cut}).json()["tags"]
        assert kept == full[:2], field


def test_probability_cut_offs_are_range_checked(http, png, stub):
    """A probability cut-off outside 0-1 (e.g. 50 meant as a percentage) is a 422 naming the
    field, over REST and gRPC, instead of an empty answer; so is mixing the old and new name."""
    for fields, field in (({"min_probability": 50}, "min_probability"),
                          ({"threshold": 50}, "threshold"), ({"min_probability": -0.1},
                                                             "min_probability"),
                          ({"threshold": 0.5, "min_score": 1}, "threshold")):
        r = tag_multipart(http, png, LABELS, **fields)
        assert r.status_code == 422, (fields, r.text)
        assert r.json()["error"]["field"] == field
        with pytest.raises(grpc.RpcError) as info:
            stub.Tag(pb.TagRequest(image=png, labels=LABELS, **fields), metadata=AUTH,
                     timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
    assert tag_multipart(http, png, LABELS, min_score=50).json()["tags"] == []  # a raw score


def test_label_cache_hits_and_label_gflops(http, png, manifest):
    fresh = ["cat 1 2 3", "bus 4 5 6"]
    first = tag_multipart(http, png, fresh).json()
    second = tag_multipart(http, png, fresh).json()
    assert first["gflops"]["labels"] == pytest.approx(2 * manifest["gflops"]["label"])
    assert second["gflops"]["labels"] == 0
    metrics = http.get("/metrics").text
    assert _metric(metrics, "ml2p_label_cache_hits_total") >= 2
    assert _metric(metrics, "ml2p_label_cache_misses_total") >= 2


def test_batch_endpoint_multipart_and_json(http, png):
    other = image_bytes((20, 160, 40))
    files = [("images", ("a.png", png)), ("images", ("b.png", other))]
    r = http.post("/v1/tag/batch", files=files, data={"labels": LABELS, "top_k": "3"})
    body = r.json()
    assert r.status_code == 200, body
    assert [res["index"] for res in body["results"]] == [0, 1]
    assert all(len(res["tags"]) == 3 for res in body["results"])
    first = {t["label"]: t["score"] for t in body["results"][0]["tags"]}
    single = _scores(tag_multipart(http, png, LABELS, top_k=3))
    assert first == pytest.approx(single, abs=1e-5)
    as_json = http.post("/v1/tag/batch", json={
        "images": [base64.b64encode(png).decode(), base64.b64encode(other).decode()],
        "labels": LABELS, "top_k": 3}).json()
    assert [r["tags"] for r in as_json["results"]] == [r["tags"] for r in body["results"]]
    assert set(body["timings_ms"]) == {"labels", "total"}


def test_batch_too_many_images(http, png):
    files = [("images", (f"{i}.png", png)) for i in range(5)]  # server max_images=4
    r = http.post("/v1/tag/batch", files=files, data={"labels": ["dog"]})
    assert r.status_code == 422 and error_of(r)["field"] == "images"


def test_form_parser_caps_are_limits_not_bare_400(http, png):
    """Far past the caps the multipart parser itself stops; still a 422 naming the field."""
    files = [("images", (f"{i}.png", png)) for i in range(9)]  # max_images=4, parser cap 5
    r = http.post("/v1/tag/batch", files=files, data={"labels": ["dog"]})
    assert r.status_code == 422 and error_of(r)["field"] == "images", r.text
    r = http.post("/v1/tag", files={"image": ("a.png", png)},
                  data={"labels": [f"l{i}" for i in range(200)]})  # max_labels=50, cap 114
    assert r.status_code == 422 and error_of(r)["field"] == "labels", r.text
    assert "at most 50 labels" in error_of(r)["message"]


# --- images ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: image_bytes(fmt="JPEG", mode="CMYK"),
    lambda: image_bytes(mode="P"),
    lambda: image_bytes(mode="RGBA"),
    lambda: image_bytes(fmt="WEBP"),
    lambda: _png(Image.fromarray(np.full((20, 30), 40000, np.uint16))),
    lambda: image_bytes(fmt="GIF", save_all=True, append_images=[
        Image.new("RGB", (64, 48), (0, 0, 255))], duration=50, loop=0),
], ids=["cmyk-jpeg", "palette", "rgba", "webp", "16-bit", "animated-gif"])
def test_unusual_modes_are_converted(http, make):
    assert tag_multipart(http, make(), ["dog"]).status_code == 200


def test_animated_gif_uses_first_frame(http):
    first = Image.new("RGB", (64, 48), (250, 250, 0))
    frames = image_bytes((250, 250, 0), fmt="GIF", save_all=True,
                         append_images=[Image.new("RGB", (64, 48), (0, 0, 255))], loop=0)
    still = image_bytes((250, 250, 0), fmt="GIF")
    del first
    assert _scores(tag_multipart(http, frames, LABELS)) == _scores(
        tag_multipart(http, still, LABELS))


def test_exif_orientation_is_honoured(http):
    upright = Image.open(io.BytesIO(image_bytes((30, 90, 200), size=(40, 64))))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = _png(stored, exif=exif)
    plain = _png(upright)
    assert _scores(tag_multipart(http, rotated, LABELS)) == pytest.approx(
        _scores(tag_multipart(http, plain, LABELS)), abs=1e-6)


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"<html><body>not an image</body></html>", "not a supported image"),
    (image_bytes()[:60], "truncated"),
], ids=["empty", "html", "truncated-png"])
def test_corrupt_image_is_400_naming_the_problem(http, data, words):
    r = tag_multipart(http, data, ["dog"])
    assert r.status_code == 400
    error = error_of(r)
    assert error["code"] == "invalid_image" and error["field"] == "image"
    assert words in error["message"]


def test_bad_base64_is_400(http):
    r = http.post("/v1/tag", json={"image": "***not base64***", "labels": ["dog"]})
    assert r.status_code == 400 and "base64" in error_of(r)["message"]


def test_too_many_pixels_is_413_before_decoding(http):
    big = _png(Image.new("RGB", (1200, 1000)))  # 1.2 MP > max_pixels 1 MP, tiny file
    r = tag_multipart(http, big, ["dog"])
    assert r.status_code == 413 and error_of(r)["code"] == "image_too_large"
    # a decompression bomb: a PNG header declaring 50,000 x 50,000 pixels
    bomb = bytearray(_png(Image.new("L", (1, 1))))
    bomb[16:24] = (50_000).to_bytes(4, "big") * 2  # IHDR width, height
    bomb[29:33] = zlib.crc32(bomb[12:29]).to_bytes(4, "big")
    r = tag_multipart(http, bytes(bomb), ["dog"])
    assert r.status_code == 413 and "2500000000 pixels" in error_of(r)["message"]


def test_body_over_limit_is_413(http):
    r = http.post("/v1/tag", files={"image": ("x.png", b"\0" * 1_100_000)},
                  data={"labels": ["dog"]})
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(12):
            yield b"{" * 100_000

    r = http.post("/v1/tag", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# --- labels ------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, field, code", [
    ([], "labels", "invalid_labels"),
    (["dog", "   "], "labels[1]", "invalid_labels"),
    ([f"label {i}" for i in range(51)], "labels", "invalid_labels"),  # max_labels = 50
    (["dog", "x" * 2001], "labels[1]", "invalid_labels"),  # max_label_chars = 2000
], ids=["empty-list", "blank-label", "too-many", "too-many-chars"])
def test_label_limits_are_422(http, png, labels, field, code):
    r = http.post("/v1/tag", json={"image": base64.b64encode(png).decode(), "labels": labels})
    assert r.status_code == 422
    error = error_of(r)
    assert (error["field"], error["code"]) == (field, code)


def test_label_over_token_limit_is_422_never_truncated(http, png, manifest):
    limit = manifest["label_embedder"]["max_tokens"]
    long_label = " ".join(["dog"] * limit)  # limit words + special tokens > limit
    r = tag_multipart(http, png, ["sky", long_label])
    assert r.status_code == 422
    error = error_of(r)
    assert error["code"] == "label_too_long" and error["field"] == "labels[1]"
    assert "tokens" in error["message"]
    ok = " ".join(["dog"] * (limit - 2))  # exactly at the limit with [CLS]/[SEP]
    assert tag_multipart(http, png, [ok]).status_code == 200


def test_labels_and_vocabulary_exclusive(http, png):
    r = tag_multipart(http, png, ["dog"], vocabulary="voc-20")
    assert r.status_code == 422
    r = http.post("/v1/tag", files={"image": ("x.png", png)})
    assert r.status_code == 422 and error_of(r)["field"] == "labels"


@pytest.mark.parametrize("body, field", [
    ({"labels": ["dog"], "top_k": 0}, "top_k"),
    ({"labels": ["dog"], "timeout_ms": -1}, "timeout_ms"),
    ({"labels": ["dog"], "surprise": 1}, "surprise"),
    ({"labels": "dog"}, "labels"),
    ({"labels": ["dog"]}, "image"),
], ids=["top_k", "timeout", "unknown-field", "labels-not-list", "no-image"])
def test_json_validation_errors_are_422_with_field(http, png, body, field):
    if field != "image":
        body = {"image": base64.b64encode(png).decode(), **body}
    r = http.post("/v1/tag", json=body)
    assert r.status_code == 422
    assert error_of(r)["field"] == field


def test_multipart_option_validation(http, png):
    r = tag_multipart(http, png, ["dog"], top_k="many")
    assert r.status_code == 422 and error_of(r)["field"] == "top_k"
    r = http.post("/v1/tag", files={"image": ("x.png", png)}, data={"labels_json": "[not json"})
    assert r.status_code == 422 and error_of(r)["field"] == "labels_json"
    r = http.post("/v1/tag", files={"image": ("x.png", png)},
                  data={"labels_json": '{"a": 1}'})
    assert r.status_code == 422 and "array of strings" in error_of(r)["message"]
    r = http.post("/v1/tag", files={"image": ("x.png", png)},
                  data={"labels": "dog", "labels_json": '["cat"]'})
    assert r.status_code == 422 and error_of(r)["field"] == "labels_json"


def test_multipart_labels_that_look_like_json_are_labels(http, png):
    """Every `labels` field is one label exactly as sent, whatever it looks like."""
    for sent in (["[draft] photo"], ['["a","b"]'], ["[1, 2]", "dog"], ["[", "]"]):
        r = http.post("/v1/tag", files={"image": ("x.png", png)}, data={"labels": sent})
        assert r.status_code == 200, (sent, r.text)
        assert sorted(t["label"] for t in r.json()["tags"]) == sorted(sent)


# --- protocol-level errors ---------------------------------------------------------------
def test_unsupported_media_type_404_405_and_malformed_json(http):
    r = http.post("/v1/tag", content=b"dog", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = http.get("/v1/tag")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    r = http.post("/v1/tag", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"


def test_api_key(server, png):
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, path in [("POST", "/v1/tag"), ("POST", "/tag"), ("POST", "/v1/tag/batch"),
                             ("GET", "/v1/vocabularies/voc-20"),
                             ("PUT", "/v1/vocabularies/x"), ("DELETE", "/v1/vocabularies/x"),
                             ("GET", "/v1/models")]:
            r = anonymous.request(method, path, json={"labels": ["a"]})
            assert r.status_code == 401, (method, path)
            assert error_of(r)["code"] == "unauthenticated"
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = tag_multipart(httpx.Client(base_url=server.url, headers={
            "Authorization": "Bearer wrong-key"}), png, ["dog"])
        assert wrong.status_code == 401
        for path in ("/livez", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path


def test_request_id_echoed_or_generated(http, png):
    r = http.post("/v1/tag", files={"image": ("x.png", png)}, data={"labels": ["dog"]},
                  headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42" and r.json()["request_id"] == "req-42"
    generated = http.get("/v1/nothing").headers["x-request-id"]
    assert len(generated) == 32
    unsafe = "has spaces; and <html>" + "x" * 200
    assert http.get("/livez", headers={"X-Request-ID": unsafe}).headers[
        "x-request-id"] != unsafe


# --- vocabularies ------------------------------------------------------------------------
def test_vocabulary_lifecycle(http, png, server):
    labels = ["dog", "red car", "sky", "Sky"]
    r = http.put("/v1/vocabularies/pets-1", json={"labels": labels})
    assert r.status_code == 201, r.text
    assert r.json()["labels"] == labels[:3] and r.json()["duplicates_removed"] == ["Sky"]
    assert (server.log_path.parent / "vocabularies" / "pets-1.json").is_file()
    assert http.put("/v1/vocabularies/pets-1", json={"labels": labels[:2]}).status_code == 200
    got = http.get("/v1/vocabularies/pets-1").json()
    assert got["labels"] == labels[:2] and got["builtin"] is False
    assert "pets-1" in http.get("/v1/vocabularies").json()["vocabularies"]
    by_name = tag_multipart(http, png, [], vocabulary="pets-1")
    assert _scores(by_name) == _scores(tag_multipart(http, png, labels[:2]))
    assert http.delete("/v1/vocabularies/pets-1").status_code == 204
    r = http.get("/v1/vocabularies/pets-1")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = tag_multipart(http, png, [], vocabulary="pets-1")
    assert r.status_code == 404 and error_of(r)["field"] == "vocabulary"


def test_vocabulary_errors(http):
    r = http.put("/v1/vocabularies/bad..name!", json={"labels": ["a"]})
    assert r.status_code == 422 and error_of(r)["field"] == "name"
    assert http.put("/v1/vocabularies/.hidden", json={"labels": ["a"]}).status_code == 422
    assert http.put("/v1/vocabularies/%2e%2e%2fetc", json={"labels": ["a"]}).status_code in (
        404, 422)
    r = http.put("/v1/vocabularies/empty", json={"labels": []})
    assert r.status_code == 422
    r = http.put("/v1/vocabularies/nus-wide-81", json={"labels": ["a"]})
    assert r.status_code == 409 and error_of(r)["code"] == "conflict"
    assert http.delete("/v1/vocabularies/nus-wide-81").status_code == 409
    assert http.delete("/v1/vocabularies/never-made").status_code == 404


def test_vocabulary_label_limit_is_its_own(http, png):
    """A stored vocabulary may hold more labels than one request (60 against 50 here)."""
    labels = [f"thing {i}" for i in range(61)]
    r = http.put("/v1/vocabularies/too-big", json={"labels": labels})
    assert r.status_code == 422 and error_of(r)["field"] == "labels"
    assert "61 labels, over the limit of 60" in error_of(r)["message"]
    assert http.get("/v1/vocabularies/too-big").status_code == 404  # nothing half-stored
    assert tag_multipart(http, png, labels[:51]).status_code == 422  # the per-request limit
    assert http.put("/v1/vocabularies/big", json={"labels": labels[:60]}).status_code == 201
    r = tag_multipart(http, png, [], vocabulary="big", top_k=60)
    assert r.status_code == 200 and len(r.json()["tags"]) == 60
    assert http.delete("/v1/vocabularies/big").status_code == 204


def test_builtin_vocabularies(http, png):
    nus = http.get("/v1/vocabularies/nus-wide-81").json()
    assert nus["builtin"] and nus["size"] == 81 and "waterfall" in nus["labels"]
    voc = http.get("/v1/vocabularies/voc-20").json()  # packaged in artifact.vocabularies
    assert voc["builtin"] and voc["size"] == 20 and "potted plant" in voc["labels"]
    imagenet = http.get("/v1/vocabularies/imagenet-1k").json()
    assert imagenet["size"] == 1000 and imagenet["labels"][1].startswith("goldfish")
    r = tag_multipart(http, png, [], vocabulary="nus-wide-81", top_k=5)
    assert r.status_code == 200 and len(r.json()["tags"]) == 5


# --- models, health, metrics, docs -------------------------------------------------------
def test_models(http, manifest):
    (model,) = http.get("/v1/models").json()["models"]
    assert model["name"] == manifest["name"] and model["engine"] == "onnxruntime-cpu"
    assert (model["groups"], model["dim"]) == (manifest["groups"], manifest["dim"])
    assert model["gflops"]["image"] == manifest["gflops"]["image"]
    assert model["accuracy"] == manifest["accuracy"] and model["state"] == "ready"


def test_models_report_the_execution_policy(http):
    """Knobs the test server sets are `setting`; the rest are the CPU policy for this
    machine's cores (`auto`)."""
    from service.settings import execution_policy

    (model,) = http.get("/v1/models").json()["models"]
    policy = model["execution_policy"]
    assert policy["cores"] == os.cpu_count() and policy["engine"] == "onnxruntime-cpu"
    assert (policy["max_batch_size"], policy["source"]["max_batch_size"]) == (8, "setting")
    assert (policy["intra_op_threads"], policy["source"]["intra_op_threads"]) == (1, "setting")
    auto = execution_policy("onnxruntime-cpu", os.cpu_count())
    assert policy["source"]["inference_workers"] == "auto"
    assert policy["inference_workers"] == auto["inference_workers"]


def test_health_docs_openapi(http):
    assert http.get("/livez").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "ready"}
    assert "swagger" in http.get("/docs").text.lower()
    spec = http.get("/openapi.json").json()
    assert {"/v1/tag", "/v1/tag/batch", "/v1/vocabularies/{name}", "/v1/models", "/livez",
            "/readyz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/tag"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name) and line[len(name)] in " {"
                and all(f'{k}="{v}"' in line for k, v in labels.items())):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_names(http, png):
    tag_multipart(http, png, ["dog"])
    text = http.get("/metrics").text
    assert _metric(text, "ml2p_request_duration_seconds_count", protocol="rest",
                   endpoint="/v1/tag", status="200") >= 1
    for name in ("ml2p_queue_duration_seconds_count", "ml2p_batch_size_count",
                 "ml2p_gflops_total", "ml2p_startup_seconds"):
        assert _metric(text, name) > 0, name
    for stage in ("decode", "preprocess", "inference", "labels", "scoring"):
        assert _metric(text, "ml2p_stage_duration_seconds_count", stage=stage) > 0, stage
    for name in ("ml2p_queue_depth", "ml2p_requests_in_flight", "ml2p_label_cache_hits_total",
                 "ml2p_label_cache_misses_total"):
        assert f"\n{name} " in text, name
    assert 'ml2p_model_info{engine="onnxruntime-cpu",name=' in text
    assert 'ml2p_batch_size_bucket{le="8.0"}' in text  # buckets up to max_batch_size


def _photo(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A smooth synthetic photo (gradients and a disc): realistic JPEG sizes."""
    x, y = np.meshgrid(np.linspace(0, 1, size[0]), np.linspace(0, 1, size[1]))
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05).astype(float)
    rgb = np.stack([x, y, 0.5 * (1 - x) + 0.5 * disc], -1)
    return Image.fromarray((255 * rgb).astype(np.uint8))


def test_multi_picture_jpeg_takes_the_jpeg_fast_path(http):
    """MPO (the multi-picture JPEG of many phones) is decoded like JPEG, at a reduced draft
    scale: the same picture as MPO and as JPEG gets identical scores; decoded at full size
    and then resized, the MPO would score differently."""
    from artifact.imaging import decode_image

    photo, labels = _photo(), ["sky", "red car", "water", "tree"]
    encoded = {}
    for fmt in ("JPEG", "MPO"):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, quality=90, **({"save_all": True, "append_images":
                                                         [photo.rotate(180)]} if fmt == "MPO"
                                                        else {}))
        encoded[fmt] = buffer.getvalue()
    assert Image.open(io.BytesIO(encoded["MPO"])).format == "MPO"
    scores = {}
    for fmt, data in encoded.items():
        response = http.post("/v1/tag", files={"image": (f"p.{fmt.lower()}", data)},
                             data={"labels": labels})
        assert response.status_code == 200, response.text
        scores[fmt] = {t["label"]: t["score"] for t in response.json()["tags"]}
    assert scores["MPO"] == scores["JPEG"]
    full = Image.open(io.BytesIO(encoded["MPO"]))
    full.load()  # no draft: the full 640 x 480 frame
    assert decode_image(encoded["MPO"], target_size=32).width < full.width


def test_unreadable_labels_are_answered_with_a_warning(http, png, stub):
    """A label the text model reads as nothing but [UNK] is answered (ranked like the
    others) with a per-label warning, over REST (single, batch, vocabulary) and gRPC."""
    labels = ["dog", "🐶🐱", "🐶 dog"]
    r = tag_multipart(http, png, labels)
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(t["label"] for t in body["tags"]) == sorted(labels)
    assert [(w["label"], w["code"]) for w in body["warnings"]] == [("🐶🐱", "unknown_tokens")]
    assert "vocabulary" in body["warnings"][0]["message"]
    batch = http.post("/v1/tag/batch", json={"images": [base64.b64encode(png).decode()] * 2,
                                             "labels": labels})
    assert [w["label"] for w in batch.json()["warnings"]] == ["🐶🐱"]
    assert http.put("/v1/vocabularies/emoji-mix", json={"labels": labels}).status_code in (200,
                                                                                           201)
    by_name = http.post("/v1/tag", files={"image": ("x.png", png)},
                        data={"vocabulary": "emoji-mix"})
    assert [w["label"] for w in by_name.json()["warnings"]] == ["🐶🐱"]
    reply = stub.Tag(pb.TagRequest(image=png, labels=labels), metadata=AUTH, timeout=30)
    assert [(w.label, w.code) for w in reply.warnings] == [("🐶🐱", "unknown_tokens")]
    assert tag_multipart(http, png, ["dog"]).json()["warnings"] == []
