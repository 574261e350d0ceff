"""`ml2p bench profile`'s summary of a speedscope document (the sampling itself needs py-spy
attached to a running server: `ml2p bench profile`)."""

from __future__ import annotations

import pytest

from benchmarks.profile import markdown, summarize


def _frame(name: str, file: str, line: int = 1) -> dict:
    return {"name": name, "file": file, "line": line}


def test_shares_per_thread_and_function() -> None:
    frames = [_frame("Thread.run", "/usr/lib/python3.11/threading.py"),          # 0 generic
              _frame("tag", "/repo/service/pipeline/tagging.py", 10),            # 1
              _frame("decode_image", "/repo/artifact/imaging.py", 60),           # 2
              _frame("run", "/v/lib/site-packages/onnxruntime/session.py", 5)]   # 3
    document = {"shared": {"frames": frames}, "profiles": [
        {"name": 'Thread 7 "MainThread"', "samples": [[0, 1], [0, 1, 2]], "weights": [0.01, 0.01]},
        {"name": 'Thread 9 "ml2p-infer_0"', "samples": [[0, 3], [0, 3]], "weights": [0.01, 0.01]},
    ]}
    summary = summarize(document)
    assert summary["busy_thread_seconds"] == pytest.approx(0.04)
    assert summary["threads"] == [{"name": "MainThread", "share": 0.5},
                                  {"name": "ml2p-infer_0", "share": 0.5}]
    inclusive = {f["name"]: f["share"] for f in summary["inclusive"]}
    assert inclusive == {"tag (pipeline/tagging.py:10)": 0.5,
                         "decode_image (artifact/imaging.py:60)": 0.25,
                         "run (onnxruntime/session.py:5)": 0.5}  # threading.py left out
    own = {f["name"]: f["share"] for f in summary["self"]}
    assert own["run (onnxruntime/session.py:5)"] == 0.5
    assert own["tag (pipeline/tagging.py:10)"] == 0.25
    report = {"summary": summary, "created": "t", "command": "ml2p bench profile", "model": "m",
              "protocol": "rest", "concurrency": 16, "labels_per_request": 20, "image": "jpeg",
              "machine": {"cpus": 2}, "py_spy": "0.4", "rate": 100, "duration_s": 0.02,
              "throughput_rps": 1.0, "p50_ms": 1.0, "p99_ms": 2.0,
              "speedscope": "benchmarks/results/p.speedscope.json"}
    text = markdown(report)
    assert "| ml2p-infer_0 | 50.0% |" in text and "2.00 threads busy" in text
