"""`ml2p bench policy`: execution policies for this machine's CPU, measured side by side.

Each policy is a set of server settings (inference workers, their ONNX Runtime intra-op
threads, the batch cap, decode/preprocess threads). For each, one `ml2p serve` runs and the
load generator (a separate process, closed loop) measures REST at each `--concurrency` for
`--duration` seconds, with the same images, labels and model; the raw in-process pipeline is
measured beside them as the ceiling. `--rounds` times, every policy in turn. Writes `--out`
(JSON) and the same name with `.md`: per policy the median throughput (and its range), p50 /
p99, mean batch and server CPU, and the chosen policy (`choose`), which
`service.settings.execution_policy` makes the CPU default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import command_main, loadgen, serve_bench, serve_compare, write_report

REPO = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 2
# candidate settings (flags of `ml2p serve`), every knob explicit
CANDIDATES: list[dict] = [
    {"inference_workers": 1, "intra_op_threads": CORES, "max_batch_size": 32},
    {"inference_workers": CORES, "intra_op_threads": 1, "max_batch_size": 4},
    {"inference_workers": CORES, "intra_op_threads": CORES, "max_batch_size": 4},
    {"inference_workers": CORES, "intra_op_threads": CORES, "max_batch_size": 8},
]
# a policy may give up this much of the best single-request (c = 1) throughput for its peak
C1_TOLERANCE = 0.95


def policy_name(settings: dict) -> str:
    w, t = settings["inference_workers"], settings["intra_op_threads"]
    return (f"{w} worker{'s' * (w > 1)} x {t} thread{'s' * (t > 1)}, "
            f"batch <= {settings['max_batch_size']}")


def summarise(rounds: list[dict]) -> list[dict]:
    """Per policy and concurrency over the rounds: median throughput with its range, median
    p50 / p99 / mean batch / server CPU."""
    keys = sorted({(r["policy"], r["concurrency"]) for r in rounds},
                  key=[(r["policy"], r["concurrency"]) for r in rounds].index)
    out = []
    for policy, c in keys:
        points = [r for r in rounds if r["policy"] == policy and r["concurrency"] == c]

        def median(field: str, points=points) -> float | None:
            values = [p[field] for p in points if p.get(field) is not None]
            return round(float(np.median(values)), 2) if values else None
        rps = [p["throughput_rps"] for p in points]
        out.append({"policy": policy, "concurrency": c, "rounds": len(points),
                    "throughput_rps": median("throughput_rps"), "throughput_min": min(rps),
                    "throughput_max": max(rps), "p50_ms": median("p50_ms"),
                    "p99_ms": median("p99_ms"), "mean_batch_size": median("mean_batch_size"),
                    "server_cpu_cores": median("server_cpu_cores")})
    return out


def choose(rows: list[dict], names: list[str]) -> dict:
    """The highest peak (median over rounds) among the policies within C1_TOLERANCE of the
    best c = 1 throughput (a policy that only wins under load would make every lone request
    slower)."""
    peaks = {n: max(r["throughput_rps"] for r in rows if r["policy"] == n) for n in names}
    single = {n: next((r["throughput_rps"] for r in rows
                       if r["policy"] == n and r["concurrency"] == 1), 0.0) for n in names}
    eligible = [n for n in names if single[n] >= C1_TOLERANCE * max(single.values())]
    return {"peak_rps": peaks, "c1_rps": single, "eligible": eligible,
            "best": max(eligible, key=peaks.get)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench policy`."""
    serve_bench.add_load_arguments(parser, duration=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="every policy measured this many times, in turns (medians)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "policy.json"))


def _measure_policy(model: Path, workdir: Path, settings: dict, args: argparse.Namespace,
                    labels: list[str]) -> list[dict]:
    name = policy_name(settings)
    proc, url, _ = serve_bench._start_server(model, workdir, settings)
    try:
        measure = serve_compare._measure_served(
            "rest", proc, "rest", url,
            lambda: serve_compare._metrics(url, serve_compare.SERVICE_METRICS), len(labels))
        return [measure(loadgen.Load(args.duration, args.max_requests, concurrency=c),
                        {"concurrency": c}) | {"policy": name, "settings": settings}
                for c in args.concurrency]
    finally:
        serve_compare._stop(proc)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    labels, images = loadgen.labels(args.labels), loadgen.images()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ml2p-policy-") as tmp:
        workdir = Path(tmp)
        model = serve_bench._resolve_model(args.model, workdir)
        for k in range(args.rounds):  # in turns, so a noisy minute hits every policy alike
            for c in args.concurrency:
                load = loadgen.Load(args.duration, args.max_requests, concurrency=c)
                rounds.append(serve_compare._raw_point(model, load, labels, images,
                                                       {"concurrency": c})
                              | {"policy": "raw", "round": k})
            for settings in CANDIDATES:
                rounds += [row | {"round": k}
                           for row in _measure_policy(model, workdir, settings, args, labels)]
        manifest = json.loads((model / "manifest.json").read_text())
    rows = summarise(rounds)
    names = [policy_name(c) for c in CANDIDATES]
    choice = choose(rows, names)
    report = {
        "benchmark": "policy", "command": " ".join(["ml2p bench policy", *args.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": f"{manifest['name']}@{manifest['version']}",
        "labels_per_request": len(labels), "image": "640x480 JPEG (8 textured images)",
        "duration_s_per_point": args.duration, "protocol": "rest", "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "policies": dict(zip(names, CANDIDATES, strict=True)), "results": rows,
        "raw_peak_rps": max(r["throughput_rps"] for r in rows if r["policy"] == "raw"),
        "c1_tolerance": C1_TOLERANCE, **choice,
        "best_settings": CANDIDATES[names.index(choice["best"])],
        "total_run_s": round(time.perf_counter() - started, 1), "round_results": rounds,
    }
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    lines = [f"# Execution policies on this CPU ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`, "
             f"{report['labels_per_request']} labels per request, {report['image']}, REST, "
             f"closed loop from a separate load-generator process, "
             f"{report['duration_s_per_point']} s per point, {report['rounds']} rounds (every "
             f"policy in turn; medians, the throughput's range in brackets), "
             f"{report['machine']['cpus']} CPUs; "
             f"raw = the in-process pipeline (no server), the ceiling "
             f"({report['raw_peak_rps']} req/s at its best). Chosen (the highest peak among "
             f"the policies within {report['c1_tolerance']:.0%} of the best c = 1 "
             f"throughput): **{report['best']}** ({report['peak_rps'][report['best']]} req/s "
             f"peak, {report['c1_rps'][report['best']]} at c = 1); `ml2p serve` uses it by "
             "default on a CPU with this many cores.", "",
             "| policy | c | req/s | p50 ms | p99 ms | mean batch | server CPU cores |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['policy']} | {r['concurrency']} | {r['throughput_rps']} "
                     f"[{r['throughput_min']}-{r['throughput_max']}] | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r.get('mean_batch_size') or '-'} | "
                     f"{r.get('server_cpu_cores', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("policy", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
