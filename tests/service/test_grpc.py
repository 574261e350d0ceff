"""gRPC API through the real server, with the generated stubs."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import AUTH, pb, tag_multipart

LABELS = ["dog", "red car", "sky"]


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str, dict]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    error = info.value
    return error.code(), error.details(), dict(error.trailing_metadata() or ())


def test_tag_matches_rest(stub, http, png, manifest):
    response, call = stub.Tag.with_call(
        pb.TagRequest(image=png, labels=LABELS, top_k=2),
        metadata=(*AUTH, ("x-request-id", "grpc-1")))
    assert response.request_id == "grpc-1"
    assert ("x-request-id", "grpc-1") in tuple(call.initial_metadata())
    assert (response.model_name, response.model_version) == (manifest["name"],
                                                             manifest["version"])
    rest = tag_multipart(http, png, LABELS, top_k=2).json()["tags"]
    assert [(t.label, t.rank) for t in response.tags] == [(t["label"], t["rank"]) for t in rest]
    assert [t.score for t in response.tags] == pytest.approx([t["score"] for t in rest],
                                                             abs=1e-6)
    assert response.batch_size >= 1 and response.timings_ms.total > 0
    assert response.gflops.image == pytest.approx(manifest["gflops"]["image"])


def test_tag_errors_are_status_codes(stub, png):
    code, details, trailer = _code(stub.Tag, pb.TagRequest(image=b"junk", labels=["dog"]),
                                   metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a supported image" in details
    assert trailer["error-code"] == "invalid_image" and trailer["error-field"] == "image"
    code, _, trailer = _code(stub.Tag, pb.TagRequest(image=png), metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _, _ = _code(stub.Tag, pb.TagRequest(image=png, labels=["dog", ""]), metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _, _ = _code(stub.Tag, pb.TagRequest(image=png, vocabulary="nope"), metadata=AUTH)
    assert code == grpc.StatusCode.NOT_FOUND


def test_unauthenticated(stub, png):
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        code, _, _ = _code(stub.Tag, pb.TagRequest(image=png, labels=["dog"]), metadata=metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _, _ = _code(stub.ListModels, pb.ListModelsRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _, _ = _code(lambda: list(stub.TagStream(iter([pb.TagRequest(image=png)]))))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_tag_stream_in_order_with_ids_and_item_errors(stub, png):
    requests = [pb.TagRequest(request_id=f"r{i}", image=b"bad" if i == 3 else png,
                              labels=LABELS) for i in range(8)]
    responses = list(stub.TagStream(iter(requests), metadata=AUTH))
    assert [r.request_id for r in responses] == [f"r{i}" for i in range(8)]
    assert responses[3].error.code == "invalid_image"
    assert responses[3].error.status == "INVALID_ARGUMENT"
    good = [r for i, r in enumerate(responses) if i != 3]
    assert all(not r.HasField("error") and len(r.tags) == 3 for r in good)
    assert len({tuple(t.score for t in r.tags) for r in good}) == 1  # same image, same scores


def test_list_models(stub, manifest):
    (model,) = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH).models
    assert (model.name, model.groups, model.dim) == (manifest["name"], manifest["groups"],
                                                     manifest["dim"])
    assert model.engine == "onnxruntime-cpu" and model.state == "ready"
    assert json.loads(model.manifest_json)["accuracy"] == manifest["accuracy"]


def test_vocabulary_calls(stub, png):
    put = stub.PutVocabulary(pb.PutVocabularyRequest(name="g-vocab", labels=["dog", "sky"]),
                             metadata=AUTH)
    assert put.created_now and list(put.labels) == ["dog", "sky"]
    got = stub.GetVocabulary(pb.GetVocabularyRequest(name="g-vocab"), metadata=AUTH)
    assert list(got.labels) == ["dog", "sky"] and not got.builtin
    tagged = stub.Tag(pb.TagRequest(image=png, vocabulary="g-vocab"), metadata=AUTH)
    assert {t.label for t in tagged.tags} == {"dog", "sky"}
    stub.DeleteVocabulary(pb.DeleteVocabularyRequest(name="g-vocab"), metadata=AUTH)
    code, _, _ = _code(stub.GetVocabulary, pb.GetVocabularyRequest(name="g-vocab"),
                       metadata=AUTH)
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, _ = _code(stub.PutVocabulary, pb.PutVocabularyRequest(name="../x", labels=["a"]),
                       metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _, _ = _code(stub.DeleteVocabulary, pb.DeleteVocabularyRequest(name="nus-wide-81"),
                       metadata=AUTH)
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_message_over_body_limit(stub):
    code, _, _ = _code(stub.Tag, pb.TagRequest(image=b"\0" * 1_100_000, labels=["dog"]),
                       metadata=AUTH)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(server):
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "ml2p.v1.Tagger"):  # open without the API key
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in answer.list_services_response.service}
        assert {"ml2p.v1.Tagger", "grpc.health.v1.Health"} <= names


def test_grpc_metrics(http, stub, png):
    stub.Tag(pb.TagRequest(image=png, labels=["dog"]), metadata=AUTH)
    text = http.get("/metrics").text
    assert 'ml2p_request_duration_seconds_count{endpoint="Tag",protocol="grpc",status="OK"}' \
        in text
