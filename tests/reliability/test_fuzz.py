"""Fuzzing: schemathesis against the served OpenAPI schema, Hypothesis-driven image bytes
and label strings through REST and gRPC, raw protobuf bytes through gRPC, and a table of
inputs that once broke the server.

One server with an API key and small limits (10 labels of <= 64 characters, 200 kB bodies,
1 MP images) so every example is cheap.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from server_harness import Server, pb, pb_grpc

from artifact.testing import image_bytes

pytestmark = pytest.mark.reliability
HERE = Path(__file__).resolve().parent

KEY = "fuzz-key"
AUTH_HEADER = {"Authorization": f"Bearer {KEY}"}
AUTH = (("authorization", f"Bearer {KEY}"),)
MAX_LABELS = 10
MAX_CHARS = 64
EXAMPLES = int(os.environ.get("ML2P_FUZZ_EXAMPLES", "100"))
SCHEMA_EXAMPLES = int(os.environ.get("ML2P_SCHEMA_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
# grpc status codes that mean "the server failed", never an answer to bad input
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNIMPLEMENTED}


@pytest.fixture(scope="module")
def fuzz_server(model_dir, tmp_path_factory):
    srv = Server(model_dir, tmp_path_factory.mktemp("fuzz"), api_key=KEY,
                 max_labels=MAX_LABELS, max_label_chars=MAX_CHARS, max_vocabulary_labels=20,
                 max_body_bytes=200_000, max_pixels=1_000_000, max_images=4,
                 max_batch_size=8)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=30, headers=AUTH_HEADER) as client:
        yield client


@pytest.fixture(scope="module")
def channel(fuzz_server):
    with fuzz_server.channel() as chan:
        yield chan


def _assert_alive(server: Server) -> None:
    """livez, and one valid request over each protocol, succeed."""
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/v1/tag", headers=AUTH_HEADER, timeout=30,
                   files={"image": ("i.png", image_bytes())}, data={"labels": ["dog"]})
    assert r.status_code == 200, r.text
    with server.channel() as chan:
        reply = pb_grpc.TaggerStub(chan).Tag(pb.TagRequest(image=image_bytes(), labels=["dog"]),
                                             metadata=AUTH, timeout=30)
    assert [t.label for t in reply.tags] == ["dog"]
    assert server.proc.poll() is None


# --- schemathesis ------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_openapi_schema_fuzzing(fuzz_server, tmp_path):
    """schemathesis (its CLI: the pytest plugin does not run under pytest 9) on every
    operation of the served schema: positive and negative data, examples + coverage +
    fuzzing phases, `ML2P_SCHEMA_EXAMPLES` fuzzing examples per operation.

    Checks: no 5xx (schemathesis_hooks.py: one exception, a 504 when the request set its
    own `timeout_ms`), and every response check: documented status code, content type,
    headers (`Allow` on 405), body matching its schema, auth enforced. Left out: "schema-
    valid input accepted" / "schema-invalid input rejected" -- the schema cannot say
    "labels xor vocabulary" or "bytes that decode as an image", and a multipart text field
    carries any string.
    """
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{fuzz_server.url}/openapi.json",
         "-H", f"Authorization: Bearer {KEY}", "--phases", "examples,coverage,fuzzing",
         "--mode", "all", "--max-examples", str(SCHEMA_EXAMPLES), "--checks", "all",
         "--exclude-checks", "not_a_server_error,positive_data_acceptance,"
         "negative_data_rejection", "--request-timeout", "30",
         "--generation-database", "none", "--no-color", "--warnings", "off"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    spec = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert operations >= 12  # tag, batch, embed, score, vocabularies, models, health, metrics
    assert f"Tested: {operations}" in output or f"{operations}/{operations}" in output, \
        output[-3000:]
    cases = re.search(r"(\d+) generated", output)
    print("schemathesis:", cases.group(0) if cases else output[-500:])
    _assert_alive(fuzz_server)


# --- Hypothesis: images and labels -------------------------------------------------------
VALID_IMAGES = [image_bytes(), image_bytes((20, 90, 200), fmt="JPEG"),
                image_bytes((0, 0, 0), size=(7, 3), fmt="GIF")]


@st.composite
def images(draw) -> tuple[bytes, str]:
    """(bytes, "valid" | "invalid" | "unknown")."""
    kind = draw(st.sampled_from(["valid", "valid", "random", "mutated", "truncated"]))
    if kind == "valid":
        return draw(st.sampled_from(VALID_IMAGES)), "valid"
    if kind == "random":
        data = draw(st.binary(max_size=600))
        return data, "invalid" if data[:4] not in (b"\x89PNG", b"GIF8") else "unknown"
    base = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    if kind == "truncated":
        return bytes(base[: draw(st.integers(0, len(base) - 1))]), "unknown"
    for _ in range(draw(st.integers(1, 8))):
        base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    return bytes(base), "unknown"


SIMPLE = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz "), min_size=1,
                 max_size=12).filter(lambda s: s.strip())
HOSTILE_LABEL = st.one_of(
    st.text(max_size=24),  # any Unicode scalar value: controls, combining marks, emoji, RTL
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]),
            max_size=6),
    st.text(min_size=MAX_CHARS - 2, max_size=MAX_CHARS + 10),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "🐶🐱", "狗", "[", '["a"]', "a\r\nb",
                     "x" * 10_000]),
)
LABELS = st.one_of(
    st.lists(SIMPLE, min_size=1, max_size=MAX_LABELS),
    st.lists(st.one_of(SIMPLE, st.text(min_size=1, max_size=24)), min_size=1,
             max_size=MAX_LABELS),  # mostly valid, any Unicode
    st.lists(st.one_of(SIMPLE, HOSTILE_LABEL), max_size=MAX_LABELS + 3),
)


def _simple(labels: list[str]) -> bool:
    """Certainly valid: 1..MAX_LABELS labels of a few lowercase words."""
    return 0 < len(labels) <= MAX_LABELS and all(
        len(label) <= 12 and label.strip() and set(label) <= set("abcdefghijklmnopqrstuvwxyz ")
        for label in labels)


def _certainly_invalid(labels: list[str]) -> bool:
    return (not labels or len(labels) > MAX_LABELS
            or any(not label.strip() or len(label) > MAX_CHARS for label in labels))


def _check_echo(labels: list[str], tags: list[str], duplicates: list[str]) -> None:
    """Every label comes back exactly once, as sent: ranked, or reported as a duplicate."""
    assert sorted(tags + duplicates) == sorted(labels), (labels, tags, duplicates)
    assert len(set(tags)) == len(tags)


@pytest.mark.timeout(180)
@FUZZ
@given(image=images(), labels=LABELS, as_json=st.booleans())
def test_rest_random_images_and_labels(fuzz_server, http, image, labels, as_json):
    """Never a 5xx; invalid input is a 4xx in the error schema (labels are checked before
    the image: 422, then 400/413); certainly-valid input is a 200 that echoes every label."""
    data, validity = image
    if as_json:
        r = http.post("/v1/tag", json={"image": base64.b64encode(data).decode(),
                                       "labels": labels})
    else:
        r = http.post("/v1/tag", files={"image": ("x", data)}, data={"labels": labels})
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    if r.status_code != 200:
        error = r.json()["error"]
        assert set(error) <= {"code", "message", "field"} and error["message"]
    event(f"{validity} image, {'json' if as_json else 'multipart'}: {r.status_code} "
          f"{error['code'] if r.status_code != 200 else ''}")
    one_bracket = (not as_json and len(labels) == 1 and labels[0].lstrip().startswith("["))
    if _certainly_invalid(labels) and not one_bracket:
        assert r.status_code == 422, r.text[:300]
    elif validity == "invalid" and _simple(labels):
        assert r.status_code == 400, r.text[:300]
    elif validity == "valid" and _simple(labels):
        assert r.status_code == 200, r.text[:300]
    if r.status_code == 200 and not one_bracket:
        body = r.json()
        _check_echo(labels, [t["label"] for t in body["tags"]], body["duplicates_removed"])
    elif r.status_code == 200:
        assert validity != "invalid"


@pytest.mark.timeout(180)
@FUZZ
@given(image=images(), labels=LABELS, top_k=st.none() | st.none() | st.integers(-2, 5),
       threshold=st.none() | st.none() | st.floats())
def test_grpc_random_images_and_labels(channel, image, labels, top_k, threshold):
    """OK or INVALID_ARGUMENT only (never INTERNAL/UNKNOWN); the same oracle as REST;
    thresholds outside 0-1 (a probability: the test model is calibrated) or not finite and
    top_k < 1 are INVALID_ARGUMENT, as over REST."""
    data, validity = image
    stub = pb_grpc.TaggerStub(channel)
    fields = {"top_k": top_k} if top_k is not None else {}
    if threshold is not None:
        fields["threshold"] = threshold
    request = pb.TagRequest(image=data, labels=labels, **fields)
    if threshold is not None:
        threshold = request.threshold  # a float32 field: 3.5e38 arrives as inf
    try:
        reply = stub.Tag(request, metadata=AUTH, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details, reply = exc.code(), exc.details(), None
    event(f"{validity} image: {code.name}")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
    bad_option = (top_k is not None and top_k < 1) or (
        threshold is not None and not (math.isfinite(threshold) and 0 <= threshold <= 1))
    if _certainly_invalid(labels) or validity == "invalid" or bad_option:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    elif validity == "valid" and _simple(labels):
        assert code == grpc.StatusCode.OK, (details, labels, top_k, threshold)
    if reply is not None and top_k is None and threshold is None:
        _check_echo(labels, [t.label for t in reply.tags], list(reply.duplicates_removed))


@pytest.mark.timeout(180)
@FUZZ
@given(method=st.sampled_from(["Tag", "TagStream", "PutVocabulary", "GetVocabulary",
                               "DeleteVocabulary", "ListModels"]),
       message=st.binary(max_size=300) | st.builds(
           lambda head, tail: head + tail,
           st.sampled_from([b"\x12\x04\x89PNG", b"\x1a\x02\xff\xfe", b"\x0a\x03\xed\xa0\x80",
                            b"\x22\x01\xc3"]), st.binary(max_size=40)))
def test_grpc_raw_message_bytes(channel, method, message):
    """Arbitrary bytes as the request message of every RPC: never a server fault (a message
    that does not parse is INVALID_ARGUMENT; one that parses is answered on its merits)."""
    path = f"/ml2p.v1.Tagger/{method}"
    outcome = "OK"
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    try:
        if method == "TagStream":
            call = channel.stream_stream(path, **identity)
            replies = list(call(iter([message]), metadata=AUTH, timeout=30))
            assert len(replies) == 1
            item = pb.TagResponse.FromString(replies[0])
            if item.HasField("error"):
                assert grpc.StatusCode[item.error.status] not in SERVER_FAULTS, item.error
        else:
            channel.unary_unary(path, **identity)(message, metadata=AUTH, timeout=30)
    except grpc.RpcError as exc:
        outcome = exc.code().name
        assert exc.code() not in SERVER_FAULTS, (exc.code(), exc.details())
    finally:
        event(f"{method}: {outcome}")


@pytest.mark.timeout(30)
def test_server_alive_after_fuzzing(fuzz_server):
    _assert_alive(fuzz_server)


# --- inputs that once broke the server -----------------------------------------------------
PNG64 = base64.b64encode(image_bytes()).decode()


def _raw_json(text: str) -> dict:
    """A JSON body sent as typed (lone surrogates and NaN survive), `IMAGE` -> a PNG."""
    text = text.replace("IMAGE", PNG64)
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method, path, request_kwargs, status", [
    ("PUT", "/v1/vocabularies/fz1", _raw_json('{"labels": ["\\udc00"]}'), 422),
    ("PUT", "/v1/vocabularies/fz1", _raw_json('{"labels": ["ok", "\\ud83d"]}'), 422),
    ("POST", "/v1/tag", _raw_json('{"image": "IMAGE", "labels": ["\\ud800"]}'), 422),
    ("PUT", "/v1/vocabularies/fz2", _raw_json('{"labels": ["狗", "🐶 dog", "caf\\u00e9"]}'), 201),
    ("POST", "/v1/tag", _raw_json('{"image": "IMAGE", "labels": ["dog"], "threshold": NaN}'), 422),
    ("POST", "/v1/tag", _raw_json("[" * 10_000 + "]" * 10_000), 422),
    ("POST", "/v1/tag", {"content": b"--B\r\ngarbage", "headers": {
        "content-type": "multipart/form-data; boundary=B"}}, 422),
    ("OPTIONS", "/v1/vocabularies/x", {}, 405),
], ids=["vocab-lone-low-surrogate", "vocab-lone-high-surrogate", "tag-lone-surrogate",
        "vocab-non-ascii", "threshold-nan", "deep-json", "broken-multipart", "options"])
def test_known_hostile_rest_inputs(http, method, path, request_kwargs, status):
    r = http.request(method, path, **request_kwargs)
    assert r.status_code == status, r.text[:300]
    if status >= 400:
        assert set(r.json()) == {"error"}
    if status == 405:
        assert r.headers["allow"] == "DELETE, GET, PUT"
    if status == 201:
        assert http.get(path).json()["labels"] == json.loads(request_kwargs["content"])["labels"]


@pytest.mark.timeout(60)
def test_malformed_grpc_messages_are_invalid_argument(channel):
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    bad_utf8_label = b"\x12\x01\x00" + b"\x1a\x02\xff\xfe"  # image=b"\0", labels=[<bad>]
    for method, message in [("Tag", bad_utf8_label), ("Tag", b"\xff\xff\xff"),
                            ("PutVocabulary", b"\x0a\x02v1\x12\x01\xff")]:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/ml2p.v1.Tagger/{method}", **identity)(
                message, metadata=AUTH, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert info.value.details().startswith(f"malformed {method} message")
    # a malformed item in a stream is an item error; the stream goes on and ends (it used
    # to hang until the client's deadline)
    good = pb.TagRequest(image=image_bytes(), labels=["dog"]).SerializeToString()
    call = channel.stream_stream("/ml2p.v1.Tagger/TagStream", **identity)
    replies = [pb.TagResponse.FromString(r) for r in call(
        iter([good, bad_utf8_label, good]), metadata=AUTH, timeout=10)]
    assert [r.HasField("error") for r in replies] == [False, True, False]
    assert replies[1].error.status == "INVALID_ARGUMENT"


@pytest.mark.timeout(30)
def test_threshold_must_be_finite_over_grpc(channel):
    stub = pb_grpc.TaggerStub(channel)
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(grpc.RpcError) as info:
            stub.Tag(pb.TagRequest(image=image_bytes(), labels=["dog"], threshold=value),
                     metadata=AUTH, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pillow_formats_outside_the_list_are_never_tried():
    """EPS would run Ghostscript on untrusted bytes if Pillow were allowed to open it."""
    from artifact.imaging import ImageDecodeError, decode_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        decode_image(eps)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PPM")  # a format Pillow reads, not served
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        decode_image(buffer.getvalue())
