"""`ml2p bench serve`: throughput and latency of the server (REST, gRPC) beside the raw pipeline.

For each concurrency (closed loop: C clients, each sending its next request when the previous
answer arrives), bounded by `--duration` seconds and `--max-requests`:
- `raw`: decode + preprocess + engine + scoring in this process, C threads, no server;
- `rest` / `grpc`: a real `ml2p serve` subprocess; the load comes from a *separate* process
  (`python benchmarks/serve_bench.py --loadgen ...`, asyncio): pre-encoded HTTP/1.1 requests
  on keep-alive connections / grpc.aio, so the client spends little of the shared CPU.
Reports requests/s, p50/p95/p99 latency (ms), errors and the server's mean batch size, prints a
table and writes `--out` (JSON) and the same name with `.md`. The load generator shares the
machine's cores with the server; the JSON records the core count.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_WORDS = ("dog cat person car bicycle bird boat bottle bus chair cow table horse motorbike plant "
          "sheep sofa train monitor tree sky grass water beach road street house city flower "
          "mountain snow sunset food")
WORDS = _WORDS.split()


def _labels(n: int) -> list[str]:
    """n distinct candidate labels: words, then two-word phrases, then numbered ones."""
    pool = WORDS + [f"{a} {b}" for a in WORDS for b in WORDS if a != b]
    return pool[:n] + [f"label {i}" for i in range(n - len(pool))]


def _images(count: int = 8) -> list[bytes]:
    """Photo-sized JPEGs (640x480) with some texture, so decoding costs what it does."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640, 480), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def _summary(latencies: list[float], errors: int, elapsed: float,
             finished: list[float] | None = None, window: tuple[float, float] | None = None
             ) -> dict:
    """Latency percentiles over every answer; throughput = answers completed inside `window`
    (start, deadline) / its length when given (the in-flight tail drained after the deadline,
    C requests at C x latency, would otherwise dilute it at high concurrency), else
    answers / `elapsed`."""
    lat = np.asarray(latencies) * 1000.0
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    if finished is not None and window is not None:
        count, elapsed = sum(1 for t in finished if t <= window[1]), window[1] - window[0]
    else:
        count = len(lat)
    return {"requests": len(lat), "errors": errors,
            "throughput_rps": round(count / elapsed, 2) if elapsed else 0.0,
            "p50_ms": round(float(pct[0]), 2), "p95_ms": round(float(pct[1]), 2),
            "p99_ms": round(float(pct[2]), 2)}


# --- raw in-process pipeline ---------------------------------------------------------------
def bench_raw(model: Path, concurrency: int, duration: float, max_requests: int,
              labels: list[str], images: list[bytes]) -> dict:
    from service.artifact import load_artifact
    from service.engine.scoring import rank, score
    from service.imaging import decode_image, preprocess
    from service.runtime import create_engine
    from service.settings import Settings

    artifact = load_artifact(model)
    engine = create_engine(Settings(model=model), artifact)
    engine.warmup()
    matrix = engine.encode_labels(labels)
    spec = artifact.preprocessing
    latencies: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            with lock:
                if len(latencies) >= max_requests:
                    return
            start = time.perf_counter()
            x = preprocess(decode_image(images[i % len(images)], target_size=spec.size), spec)
            rank(score(engine.encode_images(x[None]), matrix)[0], labels)
            end = time.perf_counter()
            with lock:
                latencies.append(end - start)
                finished.append(end)
            i += 1

    begin = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary(latencies, 0, time.perf_counter() - begin, finished, (begin, stop_at))


# --- load generator (runs in its own process) ----------------------------------------------
async def _loadgen(protocol: str, target: str, concurrency: int, duration: float,
                   max_requests: int, labels: list[str], images: list[bytes]) -> dict:
    latencies: list[float] = []
    finished: list[float] = []
    errors = 0
    if protocol == "rest":
        import httpx

        host, port = target.removeprefix("http://").split(":")
        requests = {}  # whole HTTP/1.1 requests encoded once: measure the server, not a client
        for image in images:
            body = httpx.Request("POST", target, files={"image": ("i.jpg", image)},
                                 data={"labels": json.dumps(labels)})
            payload = body.read()
            requests[image] = (
                f"POST /v1/tag HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                f"{body.headers['content-type']}\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload
        connections: asyncio.Queue = asyncio.Queue()
        for _ in range(concurrency):
            connections.put_nowait(await asyncio.open_connection(host, int(port)))

        async def send(image: bytes) -> bool:
            reader, writer = await connections.get()
            try:
                writer.write(requests[image])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                return head.startswith(b"HTTP/1.1 200")
            finally:
                connections.put_nowait((reader, writer))
    else:
        import grpc

        from service.protos import load

        pb, pb_grpc = load()
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.TaggerStub(channel)

        messages = {image: pb.TagRequest(image=image, labels=labels) for image in images}

        async def send(image: bytes) -> bool:
            try:
                await stub.Tag(messages[image], timeout=60)
                return True
            except grpc.aio.AioRpcError:
                return False

    for image in images[:4]:  # warm-up: connections, label cache
        await send(image)
    stop_at = time.perf_counter() + duration

    async def worker(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at and len(latencies) + errors < max_requests:
            start = time.perf_counter()
            ok = await send(images[i % len(images)])
            if ok:
                finished.append(time.perf_counter())
                latencies.append(finished[-1] - start)
            else:
                errors += 1
            i += 1

    begin = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - begin
    if protocol == "rest":
        while not connections.empty():
            connections.get_nowait()[1].close()
    else:
        await channel.close()
    return _summary(latencies, errors, elapsed, finished, (begin, stop_at))


def _run_loadgen(protocol: str, target: str, concurrency: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--loadgen", protocol,
               "--target", target, "--concurrency", str(concurrency),
               "--duration", str(args.duration), "--max-requests", str(args.max_requests),
               "--labels", str(args.labels)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=args.duration * 4 + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- server control ------------------------------------------------------------------------
def _metric_sum(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _start_server(model: Path, workdir: Path) -> tuple[subprocess.Popen, str, str]:
    import httpx

    from service.testing import free_port

    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "ML2P_API_KEY"}
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--model", str(model),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-level", "warning",
         "--vocab-dir", str(workdir / "vocabularies")],
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
    from service.testing import write_tiny_artifact

    print("no artifact given (--model / ML2P_MODEL): using a tiny generated test model")
    return write_tiny_artifact(workdir / "tiny")


def run(args: argparse.Namespace) -> int:
    images = _images()
    labels = _labels(args.labels)
    with tempfile.TemporaryDirectory(prefix="ml2p-bench-") as tmp:
        workdir = Path(tmp)
        model = _resolve_model(args.model, workdir)
        manifest = json.loads((model / "manifest.json").read_text())
        rows: list[dict] = []
        if "raw" in args.protocols:
            for c in args.concurrency:
                rows.append({"system": "raw", "concurrency": c,
                             **bench_raw(model, c, args.duration, args.max_requests, labels,
                                         images)})
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
                        result = _run_loadgen(protocol, target, c, args)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _print_row(row: dict) -> None:
    print(f"{row['system']:>5} c={row['concurrency']:<3} {row['throughput_rps']:>8.1f} req/s  "
          f"p50 {row['p50_ms']:>7.1f}  p95 {row['p95_ms']:>7.1f}  p99 {row['p99_ms']:>7.1f} ms"
          f"  errors {row['errors']}"
          + (f"  batch {row['mean_batch_size']}" if row.get("mean_batch_size") else ""),
          flush=True)


def _markdown(report: dict) -> str:
    lines = [f"# Serving benchmark ({report['created']})", "",
             f"Model `{report['model']}`"
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


def _loadgen_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loadgen", choices=["rest", "grpc"], required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-requests", type=int, required=True)
    parser.add_argument("--labels", type=int, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    result = asyncio.run(_loadgen(args.loadgen, args.target, args.concurrency, args.duration,
                                  args.max_requests, _labels(args.labels), _images()))
    print(json.dumps(result))


if __name__ == "__main__":
    _loadgen_main()
