"""Start-up and shutdown of the real process: graceful drain, broken artifacts, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import REPO, Server, free_port, pb, pb_grpc

from artifact.testing import image_bytes
from ml2p_cli import main as ml2p


def _in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("ml2p_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_drains_in_flight_refuses_new_work_and_exits_0(model_dir, tmp_path):
    srv = Server(model_dir, tmp_path, inference_delay_ms=800, max_batch_size=2,
                 drain_timeout_s=20).wait_ready()
    png = image_bytes()
    results: list[httpx.Response] = []

    def client() -> None:
        results.append(httpx.post(f"{srv.url}/v1/tag", files={"image": ("i.png", png)},
                                  data={"labels": ["dog"]}, timeout=30))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while _in_flight(srv.url) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.signal()  # SIGTERM while 4 requests are queued/running (~2.4 s of work)
    time.sleep(0.2)
    ready = httpx.get(f"{srv.url}/readyz")
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
    assert "\nml2p_ready 0.0\n" in httpx.get(f"{srv.url}/metrics").text
    refused = httpx.post(f"{srv.url}/v1/tag", files={"image": ("i.png", png)},
                         data={"labels": ["dog"]})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
    with srv.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ml2p.v1.Tagger"))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=png, labels=["dog"]))
            raise AssertionError("Tag succeeded while draining")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in results] == [200] * 4
    assert srv.stop(timeout=20) == 0
    assert '"msg": "stopped"' in srv.log()


def test_drain_timeout_answers_queued_work_503_and_exits_0(model_dir, tmp_path):
    """Work still queued when the drain timeout runs out is refused with a 503 /
    UNAVAILABLE naming the timeout (it was a bare 500 once); the running batch finishes."""
    srv = Server(model_dir, tmp_path, inference_delay_ms=1000, max_batch_size=1,
                 inference_workers=1, drain_timeout_s=1).wait_ready()  # one batch at a time
    png = image_bytes()
    rest: list[httpx.Response] = []
    rpc: list[grpc.StatusCode] = []

    def rest_client() -> None:
        rest.append(httpx.post(f"{srv.url}/v1/tag", files={"image": ("i.png", png)},
                               data={"labels": ["dog"]}, timeout=30))

    def grpc_client() -> None:
        with srv.channel() as channel:
            try:
                pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=png, labels=["dog"]),
                                                timeout=30)
                rpc.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                rpc.append(error.code())
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    assert "drain timeout of 1s" in error.details()

    threads = ([threading.Thread(target=rest_client) for _ in range(4)]
               + [threading.Thread(target=grpc_client) for _ in range(2)])
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while _in_flight(srv.url) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.signal()  # 6 s of work queued, 1 s to drain
    started = time.monotonic()
    assert srv.stop(timeout=20) == 0
    assert time.monotonic() - started < 8
    for thread in threads:
        thread.join(30)
    statuses = [r.status_code for r in rest]
    assert set(statuses) <= {200, 503} and len(statuses) == 4, [r.text for r in rest]
    for refused in (r for r in rest if r.status_code == 503):
        error = refused.json()["error"]
        assert error["code"] == "unavailable" and "drain timeout of 1s" in error["message"]
    assert set(rpc) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE} and len(rpc) == 2
    outcomes = statuses + [200 if code == grpc.StatusCode.OK else 503 for code in rpc]
    assert 1 <= outcomes.count(200) <= 3 and outcomes.count(503) >= 3, outcomes


def test_broken_artifact_fails_at_startup_with_one_message(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["dim"] += 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    run = subprocess.run(
        [sys.executable, "-m", "ml2p_cli", "serve", "--model", str(broken),
         "--http-port", str(free_port()), "--grpc-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("ml2p: error: cannot start: model artifact")
    assert "visual.onnx" in lines[0] and f"implies {manifest['dim']}" in lines[0]


def test_cli_tag_local_and_remote(model_dir, server, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(image_bytes())
    assert ml2p(["tag", str(image), "--labels", "dog", "sky", "--model", str(model_dir),
                 "--json", "--vocab-dir", str(tmp_path / "v")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert {t["label"] for t in local["tags"]} == {"dog", "sky"}
    assert ml2p(["tag", str(image), "--labels", "dog", "sky", "--url", server.url,
                 "--api-key", "test-key", "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert [t["score"] for t in remote["tags"]] == [t["score"] for t in local["tags"]]
    assert ml2p(["tag", str(image), "--vocabulary", "nus-wide-81", "--top-k", "3",
                 "--url", server.url, "--api-key", "test-key"]) == 0
    assert capsys.readouterr().out.count("\n") == 4  # path + 3 tags
    assert ml2p(["tag", str(image), "--labels", "dog", "sky", "--url",
                 f"grpc://{server.grpc_target}", "--api-key", "test-key", "--json"]) == 0
    over_grpc = json.loads(capsys.readouterr().out)
    assert [t["score"] for t in over_grpc["tags"]] == pytest.approx(
        [t["score"] for t in local["tags"]], abs=1e-6)
    assert ml2p(["tag", str(image), "--labels", "dog", "--url", server.url]) == 1  # no key
    assert "error: missing or wrong API key" in capsys.readouterr().out


def test_cli_tag_help_shows_only_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        ml2p(["tag", "--help"])
    text = capsys.readouterr().out
    for own in ("--labels", "--url", "--api-key", "--cacert", "--model", "--precision"):
        assert own in text
    for server_only in ("--max-queue-size", "--http-port", "--label-cache-size", "--warmup"):
        assert server_only not in text


def test_stop_fits_the_bound_when_a_batch_outlasts_the_drain(model_dir, tmp_path):
    """SIGTERM while one batch runs far longer than the drain timeout: the process still
    exits 0 within Settings.shutdown_bound_s (the drain, then the servers' short own grace),
    which is what the compose file's stop_grace_period must cover
    (tests/deploy/test_compose.py)."""
    from service.settings import Settings

    drain = 2.0
    bound = Settings(drain_timeout_s=drain).shutdown_bound_s
    srv = Server(model_dir, tmp_path, inference_delay_ms=30_000, max_batch_size=1,
                 inference_workers=1, drain_timeout_s=drain).wait_ready()
    png = image_bytes()
    outcome: list[object] = []

    def client() -> None:
        try:
            outcome.append(httpx.post(f"{srv.url}/v1/tag", files={"image": ("i.png", png)},
                                      data={"labels": ["dog"]}, timeout=60).status_code)
        except httpx.HTTPError as exc:  # cut off: its batch outlived the drain
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 10
    while _in_flight(srv.url) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the batch is running
    srv.signal()
    started = time.monotonic()
    code = srv.stop(timeout=40)
    took = time.monotonic() - started
    thread.join(60)
    assert code == 0, srv.log()
    assert drain <= took <= bound, (took, bound)
    assert outcome and outcome[0] != 200, outcome
