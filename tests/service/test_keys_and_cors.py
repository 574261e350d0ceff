"""Named API keys (a key file) and the CORS allow-list, through real servers.

The key file's names show up in the access log and in ml2p_authenticated_requests_total; the
keys themselves never appear in either. CORS headers are sent to the allowed origins only,
on answers and on refusals alike, and not at all when no origin is configured.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import httpx
import pytest
from server_harness import REPO, Server, pb, pb_grpc

from artifact.testing import image_bytes

KEYS = {"alice": "alice-3f9a1c0b7e2d4865", "bob": "bob-94c2e7d1a0f35b68"}
ALLOWED = "https://app.example"
LABELS = ["cat", "dog"]


@pytest.fixture(scope="module")
def keyed(model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("keys")
    key_file = work / "keys"
    key_file.write_text("# name:key\n" + "".join(f"{n}:{k}\n" for n, k in KEYS.items()))
    srv = Server(model_dir, work, api_keys_file=key_file,
                 cors_origins=f"{ALLOWED}, http://localhost:3000").wait_ready()
    yield srv
    assert srv.stop() == 0


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _tag(srv: Server, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/tag", headers=headers, timeout=30,
                      files={"image": ("a.png", image_bytes(), "image/png")},
                      data={"labels": LABELS})


def _key_counts(srv: Server) -> dict[tuple[str, str], float]:
    counts = {}
    for line in httpx.get(f"{srv.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ml2p_authenticated_requests_total{"):
            labels, value = line[len("ml2p_authenticated_requests_total{"):].split("} ")
            parsed = dict(part.split("=") for part in labels.split(","))
            counts[(parsed["protocol"].strip('"'), parsed["key"].strip('"'))] = float(value)
    return counts


def test_named_keys_authenticate_and_are_counted_by_name(keyed):
    before = _key_counts(keyed)
    assert _tag(keyed, {}).status_code == 401
    assert _tag(keyed, {"Authorization": "Bearer alice"}).status_code == 401
    assert _tag(keyed, _bearer("alice")).status_code == 200
    assert _tag(keyed, _bearer("alice")).status_code == 200
    assert _tag(keyed, _bearer("bob")).status_code == 200
    with keyed.channel() as channel:
        stub = pb_grpc.TaggerStub(channel)
        stub.Tag(pb.TagRequest(image=image_bytes(), labels=LABELS), timeout=30,
                 metadata=(("authorization", f"Bearer {KEYS['bob']}"),))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Tag(pb.TagRequest(image=image_bytes(), labels=LABELS), timeout=30,
                     metadata=(("authorization", "Bearer nope"),))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = _key_counts(keyed)
    gained = {k: after[k] - before.get(k, 0.0) for k in after}
    assert gained == {("rest", "alice"): 2, ("rest", "bob"): 1, ("grpc", "bob"): 1}

    metrics = httpx.get(f"{keyed.url}/metrics", timeout=10).text
    log = keyed.log()
    for key in KEYS.values():
        assert key not in metrics and key not in log, "a key leaked into /metrics or the log"
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [e for e in lines if e.get("msg") == "request" and e.get("status") in (200, "OK")
                and e.get("path", e.get("method")) in ("/v1/tag", "Tag")]
    assert {(e["protocol"], e.get("key")) for e in requests} == {
        ("rest", "alice"), ("rest", "bob"), ("grpc", "bob")}


def test_cors_allows_listed_origins_only(keyed):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    ok = httpx.options(f"{keyed.url}/v1/tag", headers={"Origin": ALLOWED, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = httpx.options(f"{keyed.url}/v1/tag",
                          headers={"Origin": "https://evil.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # a refusal carries the header too, so the page's script can read why
    refused = _tag(keyed, {"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in refused.headers["access-control-expose-headers"].lower()
    answered = _tag(keyed, {"Origin": "https://evil.example", **_bearer("alice")})
    assert answered.status_code == 200 and "access-control-allow-origin" not in answered.headers


def test_no_cors_headers_without_an_allow_list(model_dir, tmp_path):
    srv = Server(model_dir, tmp_path).wait_ready()
    try:
        response = httpx.options(f"{srv.url}/v1/tag", headers={
            "Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code == 405
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("content, problem", [
    ("alice %s\n", "expected `name:key`"),
    ("al ice:%s\n", "key name 'al ice'"),
    ("alice:%s\nalice:other-key\n", "given twice"),
    ("# nothing\n", "no keys"),
])
def test_a_bad_key_file_stops_the_start_naming_the_line(tmp_path, content, problem):
    secret = "s3cret-value-0000"
    key_file = tmp_path / "keys"
    key_file.write_text(content.replace("%s", secret))
    result = subprocess.run([sys.executable, "-m", "ml2p_cli", "serve", "--api-keys-file",
                             str(key_file), "--http-port", "0", "--grpc-port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr and str(key_file) in result.stderr
    assert secret not in result.stderr + result.stdout
