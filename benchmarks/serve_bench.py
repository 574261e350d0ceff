"""`ml2p bench serve`: throughput and latency of the server (REST, gRPC) beside the raw pipeline.

For each concurrency (closed loop: C clients, each sending its next request when the previous
answer arrives), bounded by `--duration` seconds and `--max-requests`:
- `raw`: decode + preprocess + engine + scoring in this process, C threads, no server;
- `rest` / `grpc`: a real `ml2p serve` subprocess; the load comes from a *separate* process
  (`python benchmarks/loadgen.py ...`, asyncio): pre-encoded HTTP/1.1 requests on keep-alive
  connections / grpc.aio, so the client spends little of the shared CPU.
The loops themselves (closed and open) are benchmarks/loadgen.py's, shared with
`ml2p bench serve-compare`.
Reports requests/s, p50/p95/p99 latency (ms), errors and the server's mean batch size, prints a
table and writes `--out` (JSON) and the same name with `.md`. The load generator shares the
machine's cores with the server; the JSON records the core count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import command_main, loadgen, write_report

REPO = Path(__file__).resolve().parents[1]


# --- raw in-process pipeline ---------------------------------------------------------------
def bench_raw(model: Path, load, labels: list[str], images: list[bytes]) -> dict:
    """One point of `load` (a loadgen.Load) on decode + preprocess + engine + scoring in this
    process: the same loops as the served systems, each request run on a thread (C threads
    closed loop, up to max_in_flight open loop)."""
    from artifact.imaging import decode_image, preprocess
    from artifact.loader import load_artifact
    from service.pipeline.scoring import rank, score
    from service.runtime import create_engine
    from service.settings import Settings

    artifact = load_artifact(model)
    engine = create_engine(Settings(model=model), artifact)
    engine.warmup()
    matrix = engine.encode_labels(labels)
    spec = artifact.preprocessing

    def pipeline(k: int) -> str:
        x = preprocess(decode_image(images[k % len(images)], target_size=spec.size), spec)
        rank(score(engine.encode_images(x[None]), matrix)[0], labels)
        return loadgen.OK

    async def point() -> dict:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(load.concurrency or load.max_in_flight) as pool:
            return await loadgen.drive(lambda k: loop.run_in_executor(pool, pipeline, k), load)

    return asyncio.run(point())


# --- server control ------------------------------------------------------------------------
def _metric_sum(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _start_server(model: Path, workdir: Path, settings: dict | None = None
                  ) -> tuple[subprocess.Popen, str, str]:
    """`ml2p serve` on free ports (`settings`: more setting flags); (process, URL, gRPC)."""
    import httpx

    from artifact.testing import free_port

    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "ML2P_API_KEY"}
    flags = [item for key, value in (settings or {}).items()
             for item in (f"--{key.replace('_', '-')}", str(value))]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml2p_cli", "serve", "--model", str(model),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-level", "warning",
         "--vocab-dir", str(workdir / "vocabularies"), *flags],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "server.log").read_text()[-2000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url, f"127.0.0.1:{grpc_port}"
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become ready")


# --- driver --------------------------------------------------------------------------------
def _resolve_model(given: str | None, workdir: Path) -> Path:
    candidate = given or os.environ.get("ML2P_MODEL")
    if candidate and (Path(candidate) / "manifest.json").is_file():
        return Path(candidate)
    if given:
        raise SystemExit(f"no artifact at {given}")
    from artifact.testing import write_tiny_artifact

    print("no artifact given (--model / ML2P_MODEL): using a tiny generated test model")
    return write_tiny_artifact(workdir / "tiny")


def _closed(args: argparse.Namespace, concurrency: int):
    return loadgen.Load(args.duration, args.max_requests, concurrency=concurrency)


def add_load_arguments(parser: argparse.ArgumentParser, duration: float) -> None:
    """The model and closed-loop flags `ml2p bench serve` and `serve-compare` share."""
    parser.add_argument("--model", help="artifact dir (default: ML2P_MODEL, else a tiny "
                                        "generated test model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=duration, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap per point")
    parser.add_argument("--labels", type=int, default=20, help="candidate labels per request")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench serve`."""
    add_load_arguments(parser, duration=5.0)
    parser.add_argument("--protocols", nargs="+", default=["raw", "rest", "grpc"],
                        choices=["raw", "rest", "grpc"])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    parser.add_argument("--note", default="", help="context recorded with the results")


def run(args: argparse.Namespace) -> int:
    images = loadgen.images()
    labels = loadgen.labels(args.labels)
    with tempfile.TemporaryDirectory(prefix="ml2p-bench-") as tmp:
        workdir = Path(tmp)
        model = _resolve_model(args.model, workdir)
        manifest = json.loads((model / "manifest.json").read_text())
        rows: list[dict] = []
        if "raw" in args.protocols:
            for c in args.concurrency:
                rows.append({"system": "raw", "concurrency": c,
                             **bench_raw(model, _closed(args, c), labels, images)})
                _print_row(rows[-1])
        served = [p for p in args.protocols if p != "raw"]
        if served:
            proc, url, grpc_target = _start_server(model, workdir)
            try:
                for protocol in served:
                    for c in args.concurrency:
                        before = (_metric_sum(url, "ml2p_batch_size_sum"),
                                  _metric_sum(url, "ml2p_batch_size_count"))
                        target = url if protocol == "rest" else grpc_target
                        result = loadgen.run_loadgen(protocol, target, _closed(args, c),
                                                args.labels)
                        after = (_metric_sum(url, "ml2p_batch_size_sum"),
                                 _metric_sum(url, "ml2p_batch_size_count"))
                        batches = after[1] - before[1]
                        rows.append({"system": protocol, "concurrency": c, **result,
                                     "mean_batch_size": round((after[0] - before[0]) / batches, 2)
                                     if batches else None})
                        _print_row(rows[-1])
            finally:
                proc.terminate()
                proc.wait(60)
    report = {
        "benchmark": "serve", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["ml2p bench serve", *args.argv]),
        "model": f"{manifest['name']}@{manifest['version']}",
        "model_is_tiny_test_model": manifest["name"] == "tiny-test",
        "labels_per_request": len(labels), "image": "640x480 JPEG",
        "duration_s_per_point": args.duration, "max_requests_per_point": args.max_requests,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "notes": "closed loop; the load generator runs in a separate process on the same "
                 "cores as the server (raw runs in-process with no server)"
                 + (f"; {args.note}" if args.note else ""),
        "results": rows,
    }
    return write_report(Path(args.out), report, _markdown)


def _print_row(row: dict) -> None:
    point = (f"c={row['concurrency']:<3}" if "concurrency" in row
             else f"rate={row['offered_rps']:<6g}")
    print(f"{row['system']:>6} {point} {row['throughput_rps']:>8.1f} req/s  "
          f"p50 {row['p50_ms']:>7.1f}  p95 {row['p95_ms']:>7.1f}  p99 {row['p99_ms']:>7.1f} ms"
          f"  errors {row['errors']}"
          + (f"  rejected {row['rejected']}" if row.get("rejected") else "")
          + (f"  dropped {row['dropped']}" if row.get("dropped") else "")
          + (f"  send lag p99 {row['send_lag_p99_ms']} ms" if "send_lag_p99_ms" in row else "")
          + (f"  batch {row['mean_batch_size']}" if row.get("mean_batch_size") else ""),
          flush=True)


def _markdown(report: dict) -> str:
    lines = [f"# Serving benchmark ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`"
             + (" (the tiny generated test model: measures serving overhead, not a real "
                "network)" if report["model_is_tiny_test_model"] else "")
             + f", {report['labels_per_request']} labels per request, {report['image']}, "
             f"{report['machine']['cpus']} CPUs, {report['duration_s_per_point']} s per point. "
             + report["notes"] + ".", "",
             "| system | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['system']} | {r['concurrency']} | {r['throughput_rps']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | "
                     f"{r.get('mean_batch_size') or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("serve", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
