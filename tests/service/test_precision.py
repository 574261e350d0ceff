"""`ML2P_PRECISION` through the real server: each value serves the graph it names, `auto`
serves int8 only when the manifest says its accuracy gate passed, and a missing variant is
refused at start-up with one message. The variant graphs here are tiny stand-ins with other
weights, so the answers show which graph served."""

from __future__ import annotations

import shutil

import httpx
import pytest
from server_harness import Server, tag_multipart

from artifact.testing import add_tiny_variant, image_bytes, write_tiny_artifact

IMAGE = image_bytes()
LABELS = ["dog", "sky", "red car", "tree"]


def _serve(artifact, tmp_path, **settings) -> tuple[dict, list[float], str]:
    """(precision in /v1/models, the scores of one tag request, the log) of a fresh server."""
    workdir = tmp_path / f"srv-{len(list(tmp_path.iterdir()))}"
    workdir.mkdir()
    srv = Server(artifact, workdir, **settings)
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            (model,) = client.get("/v1/models").json()["models"]
            reply = tag_multipart(client, IMAGE, LABELS)
            assert reply.status_code == 200, reply.text
            scores = sorted((t["label"], t["score"]) for t in reply.json()["tags"])
        return model["precision"], [s for _, s in scores], srv.log()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Three tiny artifacts: int8 + fp16 with int8's gate passed, failed, and none at all."""
    root = tmp_path_factory.mktemp("precision")
    passed = write_tiny_artifact(root / "passed")
    add_tiny_variant(passed, "int8", gate_passed=True, seed=7)
    add_tiny_variant(passed, "fp16", gate_passed=True, seed=8)
    failed = root / "failed"
    shutil.copytree(passed, failed)
    add_tiny_variant(failed, "int8", gate_passed=False, seed=7)
    bare = write_tiny_artifact(root / "bare")
    return {"passed": passed, "failed": failed, "bare": bare}


def test_each_precision_serves_its_graph_and_auto_follows_the_gate(artifacts, tmp_path):
    fp32, fp32_scores, _ = _serve(artifacts["passed"], tmp_path, precision="fp32")
    int8, int8_scores, _ = _serve(artifacts["passed"], tmp_path, precision="int8")
    fp16, fp16_scores, _ = _serve(artifacts["passed"], tmp_path, precision="fp16")
    auto, auto_scores, log = _serve(artifacts["passed"], tmp_path)  # the default: auto
    assert (fp32["served"], fp32["file"]) == ("fp32", "visual.onnx")
    assert (int8["served"], int8["file"]) == ("int8", "visual.int8.onnx")
    assert (fp16["served"], fp16["file"]) == ("fp16", "visual.fp16.onnx")
    assert len({tuple(fp32_scores), tuple(int8_scores), tuple(fp16_scores)}) == 3
    assert auto["requested"] == "auto" and auto["served"] == "int8"
    assert "passed the accuracy gate" in auto["reason"] and auto_scores == int8_scores
    assert "precision int8 (int8 passed the accuracy gate" in log


def test_auto_serves_fp32_when_the_gate_failed_or_nothing_was_measured(artifacts, tmp_path):
    failed, failed_scores, log = _serve(artifacts["failed"], tmp_path)
    assert failed["served"] == "fp32" and "did not pass the accuracy gate" in failed["reason"]
    assert "ZSL mAP change -2.00 points" in failed["reason"] and "precision fp32" in log
    bare, _, _ = _serve(artifacts["bare"], tmp_path, precision="auto")
    assert bare["served"] == "fp32" and bare["reason"] == "the artifact has no int8 graph"
    fp32, fp32_scores, _ = _serve(artifacts["failed"], tmp_path, precision="fp32")
    assert failed_scores == fp32_scores


def test_a_missing_variant_is_refused_at_startup_with_one_message(artifacts, tmp_path):
    srv = Server(artifacts["bare"], tmp_path, precision="int8")
    with pytest.raises(RuntimeError) as refused:
        srv.wait_ready()
    srv.stop()
    message = str(refused.value)
    assert "precision 'int8' requested but the artifact has no int8 graph" in message
    assert "it has: fp32" in message and "Traceback" not in message
