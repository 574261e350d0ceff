"""Cheap checks of the serve-compare benchmark's parts (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_naive_server_answers(model_dir: Path) -> None:
    app = _load("naive_server").create_app(model_dir)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    with TestClient(app) as client:
        got = client.post("/v1/tag", files={"image": ("a.jpg", buffer.getvalue())},
                          data={"labels": json.dumps(["red", "dog", "sky"])})
        assert got.status_code == 200, got.text
        assert sorted(t["label"] for t in got.json()["tags"]) == ["dog", "red", "sky"]
        assert client.post("/v1/tag", files={"image": ("a.jpg", b"nope")},
                           data={"labels": "[\"x\"]"}).status_code == 422


def test_goals_and_triton_request() -> None:
    compare = _load("serve_compare")
    rows = [{"system": s, "concurrency": c, "throughput_rps": rps, "p50_ms": p50, "p99_ms": p99}
            for s, c, rps, p50, p99 in [("raw", 1, 50, 10, 12), ("raw", 16, 100, 150, 200),
                                        ("rest", 1, 45, 12, 14), ("rest", 16, 90, 160, 210),
                                        ("naive", 16, 40, 300, 400)]]
    goals = {g["goal"]: g["met"] for g in compare.goals(rows)}
    assert goals["rest throughput at saturation >= 85% of raw"] is True
    assert goals["rest p50 at c=1 <= raw + 3 ms"] is True
    assert goals["rest >= 2x naive throughput at c=16"] is True
    request = compare._triton_request("h", b"\xff\xd8abc")
    head, body = request.split(b"\r\n\r\n", 1)
    assert int(head.split(b"Content-Length: ")[-1]) == len(body)
    assert body.endswith((5).to_bytes(4, "little") + b"\xff\xd8abc")
