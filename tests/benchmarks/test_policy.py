"""The CPU execution policy: the committed `ml2p bench policy` choice is the default, and the
choice rule keeps a policy that only wins under load from slowing lone requests."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.policy import choose, summarise
from service.settings import POLICY_FIELDS, Settings, execution_policy

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "policy.json"


def test_the_committed_choice_is_the_cpu_default_for_that_many_cores():
    report = json.loads(RESULTS.read_text())
    cores = report["machine"]["cpus"]
    policy = execution_policy("onnxruntime-cpu", cores)
    assert {k: policy[k] for k in report["best_settings"]} == report["best_settings"]


def test_settings_take_the_policy_unless_set():
    auto = Settings()
    assert {k: getattr(auto, k) for k in POLICY_FIELDS} == execution_policy(
        "onnxruntime-cpu", auto.policy()["cores"])
    assert set(auto.policy()["source"].values()) == {"auto"}
    mixed = Settings(max_batch_size=16, engine="onnxruntime-gpu")
    assert mixed.max_batch_size == 16 and mixed.policy()["source"]["max_batch_size"] == "setting"
    assert mixed.inference_workers == 1  # GPU engines: one worker, dynamic batching


def _row(policy: str, c: int, rps: float) -> dict:
    return {"policy": policy, "concurrency": c, "throughput_rps": rps}


def test_the_highest_peak_wins_only_within_the_single_request_tolerance():
    rows = [_row("a", 1, 50.0), _row("a", 16, 70.0), _row("b", 1, 36.0), _row("b", 16, 90.0),
            _row("c", 1, 48.0), _row("c", 16, 75.0)]
    choice = choose(rows, ["a", "b", "c"])
    assert choice["eligible"] == ["a", "c"] and choice["best"] == "c"


def test_rounds_are_summarised_by_their_median_and_range():
    rounds = [_row("a", 1, v) | {"p50_ms": p, "p99_ms": p, "mean_batch_size": None,
                                 "server_cpu_cores": 1.0}
              for v, p in ((50.0, 20.0), (40.0, 30.0), (60.0, 10.0))]
    (row,) = summarise(rounds)
    assert (row["throughput_rps"], row["throughput_min"], row["throughput_max"]) == (50, 40, 60)
    assert row["p50_ms"] == 20.0 and row["mean_batch_size"] is None and row["rounds"] == 3
