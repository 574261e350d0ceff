"""Cheap checks of the serve-compare benchmark's parts (the benchmark itself is not a test)."""

from __future__ import annotations

import io
import json
from argparse import ArgumentParser, Namespace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks import loadgen, naive_server, serve_compare


def test_naive_server_answers(model_dir: Path) -> None:
    app = naive_server.create_naive_app(model_dir)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    with TestClient(app) as client:
        got = client.post("/v1/tag", files={"image": ("a.jpg", buffer.getvalue())},
                          data={"labels_json": json.dumps(["red", "dog", "sky"])})
        assert got.status_code == 200, got.text
        assert sorted(t["label"] for t in got.json()["tags"]) == ["dog", "red", "sky"]
        assert client.post("/v1/tag", files={"image": ("a.jpg", b"nope")},
                           data={"labels_json": "[\"x\"]"}).status_code == 422


def test_goals_and_triton_request(tmp_path: Path) -> None:
    compare = serve_compare
    cpu = {"server_cpu_cores": 1.5, "loadgen_cpu_s": 5.0, "wall_s": 10.0}
    rows = [{"system": s, "concurrency": c, "throughput_rps": rps, "p50_ms": p50, "p99_ms": p99,
             **cpu}
            for s, c, rps, p50, p99 in [("raw", 1, 50, 10, 12), ("raw", 16, 100, 150, 200),
                                        ("rest", 1, 45, 12.0, 14), ("rest", 16, 92, 160, 210),
                                        ("grpc", 1, 45, 13, 14), ("grpc", 16, 85, 170, 230),
                                        ("naive", 16, 80, 300, 220),
                                        ("triton", 16, 90, 150, 200),
                                        ("rest-int8", 16, 125, 120, 150)]]
    decode = [{"megapixels": "12", "format": "JPEG", "decode_preprocess_ms": 20.0},
              {"megapixels": "12", "format": "MPO", "decode_preprocess_ms": 30.0}]
    goals = {g["goal"]: g["met"] for g in compare.goals(rows, decode)}
    assert goals == {
        "rest peak throughput >= 90% of raw's peak": True,      # 92 / 100
        "rest: server + load generator CPU >= 1.9 cores at its peak": True,  # 1.5 + 0.5
        "grpc peak throughput >= 90% of raw's peak": False,     # 85 / 100
        "grpc: server + load generator CPU >= 1.9 cores at its peak": True,
        "rest >= 1.1x naive throughput with p99 no higher, c=16": True,   # 1.15x, 210 < 220
        "rest >= 1x triton throughput with p99 no higher, c=16": False,   # p99 210 > 200
        "grpc >= 1.1x naive throughput with p99 no higher, c=16": False,  # p99 230 > 220
        "grpc >= 1x triton throughput with p99 no higher, c=16": False,   # 85 < 90
        "rest p50 at c=1 within 2 ms of raw": True,             # 12 - 10 = 2
        "grpc p50 at c=1 within 2 ms of raw": False,            # 13 - 10 = 3
        "rest on the int8 graph: peak >= 1.4x rest on fp32": False,  # 125 / 92 = 1.36x
        "12 MP JPEG: decode + preprocess <= 25 ms median": True,
        "12 MP MPO: decode + preprocess <= 25 ms median": False,
    }
    path = compare.figure({"results": rows, "machine": {"cpus": 2}, "created": "now"},
                          tmp_path / "serve_compare.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    request = loadgen.triton_request("h", b"\xff\xd8abc")
    head, body = request.split(b"\r\n\r\n", 1)
    assert int(head.split(b"Content-Length: ")[-1]) == len(body)
    assert body.endswith((5).to_bytes(4, "little") + b"\xff\xd8abc")


def test_open_loop_rates_are_the_same_for_every_system() -> None:
    compare = serve_compare

    def build_parser() -> ArgumentParser:
        parser = ArgumentParser()
        compare.add_arguments(parser)
        return parser

    rows = [{"system": s, "concurrency": c, "throughput_rps": rps}
            for s, c, rps in [("raw", 1, 50.0), ("raw", 4, 80.0), ("rest", 4, 60.0)]]
    args = build_parser().parse_args([])
    assert compare.open_loop_rates(args, rows) == [(40.0, 0.5), (72.0, 0.9), (96.0, 1.2)]
    args = build_parser().parse_args(["--open-loop-fractions", "0.25"])
    assert compare.open_loop_rates(args, rows) == [(20.0, 0.25)]
    args = build_parser().parse_args(["--open-loop-rates", "20,40", "60"])
    assert compare.open_loop_rates(args, []) == [(20.0, None), (40.0, None), (60.0, None)]
    args = build_parser().parse_args(["--open-loop-fractions"])
    assert compare.open_loop_rates(args, rows) == []
    with pytest.raises(SystemExit):  # fractions of raw's peak, without raw
        compare.open_loop_rates(Namespace(open_loop_fractions=["0.5"]), rows[2:])


def test_markdown_has_the_open_loop_table_beside_the_closed_one() -> None:
    compare = serve_compare
    closed = {"errors": 0, "p50_ms": 20.0, "p95_ms": 25.0, "p99_ms": 30.0}
    rows = [{"system": "raw", "concurrency": 4, "throughput_rps": 80.0, **closed},
            {"system": "rest", "concurrency": 4, "throughput_rps": 60.0, **closed,
             "rejected": 2}]
    opened = {"requests": 100, "errors": 1, "rejected": 3, "dropped": 0, "p50_ms": 30.0,
              "p95_ms": 60.0, "p99_ms": 90.0, "send_lag_p99_ms": 0.8}
    report = {
        "created": "now", "command": "ml2p bench serve-compare", "model": "m@1",
        "model_is_tiny_test_model": False, "labels_per_request": 20, "image": "img",
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "duration_s_per_point": 3.0, "max_requests_per_point": 2000, "total_run_s": 9.0,
        "skipped": {}, "notes": "", "results": rows, "goals": compare.goals(rows),
        "open_loop": {"arrivals": "poisson", "seed": 0, "max_in_flight": 256,
                      "drain_timeout_s": 60.0, "rates_rps": [40.0],
                      "fractions_of_raw_peak": [0.5], "raw_closed_loop_peak_rps": 80.0,
                      "results": [{"system": "rest", "fraction_of_raw_peak": 0.5,
                                   "offered_rps": 40.0, "scheduled_rps": 41.0,
                                   "throughput_rps": 39.5, **opened}]}}
    text = compare.markdown(report)
    assert text.index("| system | c |") < text.index("## Goals") < text.index("## Open loop")
    assert "0.5 x the raw pipeline's closed-loop peak in this run (80.0 req/s)" in text
    assert "the schedules realised 41 req/s" in text  # what was offered, not the nominal 40
    assert "| rest | 40 | 41.0 | 0.67 | 39.5 | 30.0 | 60.0 | 90.0 | 100 | 1 | 3 | 0 | 0.8 |" in text
    assert "| 0 (+2 shed) |" in text
    del report["open_loop"]
    assert "## Open loop" not in compare.markdown(report)
