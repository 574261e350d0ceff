"""`ml2p bench policy`: execution policies for this machine's CPU, measured side by side.

Each policy is a set of server settings (inference workers, their ONNX Runtime intra-op
threads, the batch cap, decode/preprocess threads). For each, one `ml2p serve` runs and the
load generator (a separate process, closed loop) measures REST at each `--concurrency` for
`--duration` seconds, with the same images, labels and model; the raw in-process pipeline is
measured once beside them as the ceiling. Writes `--out` (JSON) and the same name with `.md`:
per policy throughput, p50 / p99, mean batch and server CPU, and the policy with the highest
peak throughput.
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

from benchmarks import command_main, loadgen, serve_bench, serve_compare

REPO = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 2
# name -> settings (flags of `ml2p serve`); 0 intra-op threads = ONNX Runtime's own default
POLICIES: dict[str, dict] = {
    "default (1 worker x all cores, batch <= 32)": {},
    f"{CORES} workers x 1 thread, batch <= 4": {"inference_workers": CORES,
                                                "intra_op_threads": 1, "max_batch_size": 4},
    f"1 worker x {CORES} threads, batch <= 4": {"intra_op_threads": CORES,
                                                "max_batch_size": 4},
    f"1 worker x {CORES} threads, batch <= 8, 1 preprocess thread": {
        "intra_op_threads": CORES, "max_batch_size": 8, "preprocess_workers": 1},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench policy`."""
    serve_bench.add_load_arguments(parser, duration=10.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "policy.json"))


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    labels, images = loadgen.labels(args.labels), loadgen.images()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ml2p-policy-") as tmp:
        workdir = Path(tmp)
        model = serve_bench._resolve_model(args.model, workdir)
        for c in args.concurrency:
            load = loadgen.Load(args.duration, args.max_requests, concurrency=c)
            rows.append(serve_compare._raw_point(model, load, labels, images,
                                                 {"concurrency": c}) | {"policy": "raw"})
        for name, settings in POLICIES.items():
            proc, url, _ = serve_bench._start_server(model, workdir, settings)
            try:
                measure = serve_compare._measure_served(
                    "rest", proc, "rest", url,
                    lambda url=url: serve_compare._metrics(url, serve_compare.SERVICE_METRICS),
                    len(labels))
                for c in args.concurrency:
                    load = loadgen.Load(args.duration, args.max_requests, concurrency=c)
                    rows.append(measure(load, {"concurrency": c}) | {"policy": name,
                                                                     "settings": settings})
            finally:
                serve_compare._stop(proc)
        manifest = json.loads((model / "manifest.json").read_text())
    peaks = {name: max(r["throughput_rps"] for r in rows if r["policy"] == name)
             for name in POLICIES}
    report = {
        "benchmark": "policy", "command": " ".join(["ml2p bench policy", *args.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": f"{manifest['name']}@{manifest['version']}",
        "labels_per_request": len(labels), "image": "640x480 JPEG (8 textured images)",
        "duration_s_per_point": args.duration, "protocol": "rest",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "policies": POLICIES, "results": rows,
        "raw_peak_rps": max(r["throughput_rps"] for r in rows if r["policy"] == "raw"),
        "peak_rps": peaks, "best": max(peaks, key=peaks.get),
        "total_run_s": round(time.perf_counter() - started, 1),
    }
    return serve_bench._write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    lines = [f"# Execution policies on this CPU ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`, "
             f"{report['labels_per_request']} labels per request, {report['image']}, REST, "
             f"closed loop from a separate load-generator process, "
             f"{report['duration_s_per_point']} s per point, {report['machine']['cpus']} CPUs; "
             f"raw = the in-process pipeline (no server), the ceiling "
             f"({report['raw_peak_rps']} req/s at its best). Highest peak: "
             f"**{report['best']}** ({report['peak_rps'][report['best']]} req/s).", "",
             "| policy | c | req/s | p50 ms | p99 ms | mean batch | server CPU cores |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['policy']} | {r['concurrency']} | {r['throughput_rps']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r.get('mean_batch_size') or '-'} | "
                     f"{r.get('server_cpu_cores', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("policy", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
