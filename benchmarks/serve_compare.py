"""`ml2p bench serve-compare`: the service beside what a user would run instead, one run.

Same images, labels and model for every system, the load coming from a separate process on
loopback (benchmarks/loadgen.py, which also holds the loops), each point bounded by
`--duration` and `--max-requests`:
- closed loop at each `--concurrency` (C clients, each sending its next request when the
  previous answer arrives): throughput at saturation and latency at a given concurrency;
- then open loop at each offered rate (`--open-loop-rates`, or `--open-loop-fractions` of the
  raw pipeline's closed-loop peak in this run; the same req/s for every system): Poisson
  (`--arrivals`, `--seed`: the same schedule for every system) or constant arrivals, each
  request sent at its scheduled time whatever the earlier ones are doing, at most
  `--max-in-flight` outstanding, latency from the scheduled send time (no coordinated
  omission), errors and 429s / RESOURCE_EXHAUSTED (shed) apart.
The systems:
- `raw`: decode + preprocess + engine + scoring in-process (benchmarks/serve_bench.py), the
  ceiling: no server, no load-generator process, so it has both cores to itself;
- `rest` / `grpc`: `ml2p serve` driven by the load generator;
- `naive`: benchmarks/naive_server.py (FastAPI, the same engine per request, no batching),
  same REST load generator;
- `triton`: NVIDIA Triton through nvidia-pytriton in its own venv (benchmarks/peer/setup.sh)
  with its dynamic batcher, on the same visual.onnx and the same decode/preprocess code,
  driven over Triton's HTTP/REST (KServe v2, binary tensor extension) by the same load
  generator (`--protocol triton`).
Per point it records throughput, p50/p95/p99, errors, the mean batch size (server metrics),
the server's CPU (whole process tree, cores used) and peak RSS (sum of VmHWM over the tree),
and the load generator's CPU. Writes `--out` (JSON) and the same name with `.md`: the closed
loop table, the goals (closed loop), and the open loop table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import command_main, loadgen, serve_bench, write_report

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = Path(os.environ.get("ML2P_PEER_VENV", Path.home() / ".cache/ml2p/peer-venv"))
SYSTEMS = ("raw", "rest", "grpc", "naive", "triton", "rest-int8")
# our servers: rest and grpc serve the fp32 graph, as raw and the peers do (the same artifact
# for every system); rest-int8 is the same server on the int8 graph
PRECISION = {"rest": "fp32", "grpc": "fp32", "rest-int8": "int8"}


# --- process accounting --------------------------------------------------------------------
def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except Exception:  # noqa: BLE001 - a child may exit between listing and reading
            pass
    return total


def _peak_rss_mb(pid: int) -> float:
    total = 0
    for proc in _tree(pid):
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _metrics(url: str, names: list[str]) -> dict[str, float]:
    import httpx

    out = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for name in names:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"not ready: {url}\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- servers -------------------------------------------------------------------------------
def _start_naive(model: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    from artifact.testing import free_port

    port = free_port()
    log = workdir / "naive.log"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.naive_server",
                             "--model", str(model), "--port", str(port)], cwd=REPO,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, f"{url}/readyz", log)
    return proc, url


def _peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no peer venv at {PEER_VENV}: run benchmarks/peer/setup.sh")
    return python


def _start_triton(model: Path, labels: list[str], workdir: Path
                  ) -> tuple[subprocess.Popen, str, str]:
    from artifact.loader import load_artifact
    from artifact.testing import free_port
    from service.runtime import create_engine
    from service.settings import Settings

    python = _peer_python()
    engine = create_engine(Settings(model=model), load_artifact(model))
    matrix_path = workdir / "labels.npy"
    np.save(matrix_path, engine.encode_labels(labels))
    engine.close()
    libdir = subprocess.run([str(python), "-c", "import sysconfig; "
                             "print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = libdir + (":" + env["LD_LIBRARY_PATH"]
                                       if env.get("LD_LIBRARY_PATH") else "")
    env["PYTHONPATH"] = str(REPO)  # the peer venv imports artifact.imaging from the checkout
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = workdir / "triton.log"
    proc = subprocess.Popen(
        [str(python), "-m", "benchmarks.peer.triton_server", "--model",
         str(model), "--label-matrix", str(matrix_path), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    _wait_ready(proc, f"{url}/v2/models/tagger/ready", log)
    return proc, url, f"http://127.0.0.1:{metrics}"


# --- driver --------------------------------------------------------------------------------
def _point(system: str, fields: dict, pid: int, load, metrics_before, metrics_after) -> dict:
    cpu0, gen0, t0 = _cpu_seconds(pid), _children_cpu(), time.perf_counter()
    before = metrics_before()
    result = load()
    after = metrics_after()
    wall = time.perf_counter() - t0
    row = {"system": system, **fields, **result,
           "server_cpu_cores": round((_cpu_seconds(pid) - cpu0) / wall, 2),
           "loadgen_cpu_s": round(_children_cpu() - gen0, 2), "wall_s": round(wall, 2),
           "server_peak_rss_mb": _peak_rss_mb(pid)}
    row.update(_batch_fields(system, before, after))
    serve_bench._print_row(row)
    return row


def _raw_point(model: Path, load, labels: list[str], images: list[bytes], fields: dict) -> dict:
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = serve_bench.bench_raw(model, load, labels, images)
    row = {"system": "raw", **fields, **result,
           "server_cpu_cores": round((time.process_time() - cpu0)
                                     / (time.perf_counter() - t0), 2),
           "server_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024, 1)}
    serve_bench._print_row(row)
    return row


def _batch_fields(system: str, before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in after}
    if system in PRECISION:
        out = {"mean_batch_size": round(d["ml2p_batch_size_sum"] / d["ml2p_batch_size_count"], 2)
               if d["ml2p_batch_size_count"] else None}
        if d["ml2p_queue_duration_seconds_count"]:
            out["mean_queue_ms"] = round(1000 * d["ml2p_queue_duration_seconds_sum"]
                                         / d["ml2p_queue_duration_seconds_count"], 2)
        return out
    if system == "triton":
        out = {"mean_batch_size": round(d["nv_inference_request_success"]
                                        / d["nv_inference_exec_count"], 2)
               if d["nv_inference_exec_count"] else None}
        if d["nv_inference_request_success"]:
            n = d["nv_inference_request_success"]
            out["mean_queue_ms"] = round(d["nv_inference_queue_duration_us"] / n / 1000, 2)
        return out
    return {"mean_batch_size": 1.0}


SERVICE_METRICS = ["ml2p_batch_size_sum", "ml2p_batch_size_count",
                   "ml2p_queue_duration_seconds_sum", "ml2p_queue_duration_seconds_count"]
TRITON_METRICS = ["nv_inference_request_success", "nv_inference_exec_count",
                  "nv_inference_queue_duration_us"]


def _start(system: str, model: Path, labels: list[str], workdir: Path):
    """Start a served system: (process, load-generator protocol, its target, metrics())."""
    if system in PRECISION:
        proc, url, grpc_target = serve_bench._start_server(
            model, workdir, {"precision": PRECISION[system]})
        return (proc, "grpc" if system == "grpc" else "rest",
                grpc_target if system == "grpc" else url, lambda: _metrics(url, SERVICE_METRICS))
    if system == "naive":
        proc, url = _start_naive(model, workdir)
        return proc, "rest", url, dict  # no metrics: batch of one
    proc, url, metrics_url = _start_triton(model, labels, workdir)
    return proc, "triton", url, lambda: _metrics(metrics_url, TRITON_METRICS)


def _measure_served(system: str, proc: subprocess.Popen, protocol: str, target: str, metrics,
                    n_labels: int):
    def measure(load, fields: dict) -> dict:
        return _point(system, fields, proc.pid,
                      lambda: loadgen.run_loadgen(protocol, target, load, n_labels), metrics,
                      metrics)
    return measure


def _numbers(values: list[str] | None) -> list[float]:
    """--open-loop-rates / --open-loop-fractions as given: each argument may hold several
    numbers, comma separated ("20,40 60" -> [20.0, 40.0, 60.0])."""
    return [float(part) for value in values or [] for part in value.split(",") if part.strip()]


def open_loop_rates(args: argparse.Namespace, rows: list[dict]) -> list[tuple[float, float | None]]:
    """(offered req/s, fraction of raw's closed-loop peak or None) for each open-loop point, the
    same for every system: --open-loop-rates as given, else --open-loop-fractions x the raw
    pipeline's closed-loop peak in `rows` (this run's)."""
    rates = _numbers(getattr(args, "open_loop_rates", None))
    if rates:
        return [(rate, None) for rate in rates]
    fractions = _numbers(getattr(args, "open_loop_fractions", None))
    if not fractions:
        return []
    peak = _peak(rows, "raw")
    if not peak:
        raise SystemExit("--open-loop-fractions are fractions of raw's closed-loop peak: put raw "
                         "in --systems, or give --open-loop-rates")
    return [(round(fraction * peak, 2), fraction) for fraction in fractions]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench serve-compare`."""
    serve_bench.add_load_arguments(parser, duration=3.0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--open-loop-rates", nargs="+", metavar="RPS",
                        help="open-loop offered rates in req/s, the same for every system "
                             "(comma or space separated); instead of --open-loop-fractions")
    parser.add_argument("--open-loop-fractions", nargs="*", metavar="F",
                        default=["0.5,0.9,1.2"],
                        help="open-loop offered rates as fractions of the raw pipeline's "
                             "closed-loop peak in this run, the same req/s for every system "
                             "(default 0.5,0.9,1.2; given with no value: no open loop)")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson",
                        help="open-loop inter-arrival times")
    parser.add_argument("--seed", type=int, default=0, help="open-loop arrival schedule seed")
    parser.add_argument("--max-in-flight", type=int, default=256,
                        help="open-loop cap on outstanding requests (over it: dropped)")
    parser.add_argument("--extras", action="store_true",
                        help="also label scaling (1-10,000 labels) and image decoding (0.3-12 MP)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "serve_compare.json"))
    parser.add_argument("--note", default="", help="context recorded with the results")


def run(args: argparse.Namespace) -> int:
    images = loadgen.images()
    labels = loadgen.labels(args.labels)
    rows: list[dict] = []
    open_rows: list[dict] = []
    skipped: dict[str, str] = {}
    # raw first: the open-loop rates may be fractions of its closed-loop peak
    systems = [s for s in SYSTEMS if s in args.systems]
    if not _numbers(getattr(args, "open_loop_rates", None)) and "raw" not in systems:
        open_loop_rates(args, [])  # fails now, not after the closed loops, when raw is needed
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ml2p-compare-") as tmp:
        workdir = Path(tmp)
        model = serve_bench._resolve_model(args.model, workdir)
        manifest = json.loads((model / "manifest.json").read_text())
        for system in systems:
            proc = None
            if system == "raw":
                def measure(load, fields):
                    return _raw_point(model, load, labels, images, fields)
            else:
                try:
                    proc, protocol, target, metrics = _start(system, model, labels, workdir)
                except Exception as exc:  # noqa: BLE001 - record why the peer did not run
                    if system != "triton":
                        raise
                    skipped["triton"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                    print(f"triton skipped: {skipped['triton']}", flush=True)
                    continue
                measure = _measure_served(system, proc, protocol, target, metrics, args.labels)
            try:
                for c in args.concurrency:
                    rows.append(measure(loadgen.Load(args.duration, args.max_requests,
                                                concurrency=c), {"concurrency": c}))
                for rate, fraction in open_loop_rates(args, rows):
                    load = loadgen.Load(args.duration, args.max_requests, rate=rate,
                                   arrivals=args.arrivals, seed=args.seed,
                                   max_in_flight=args.max_in_flight)
                    open_rows.append(measure(load, {"fraction_of_raw_peak": fraction}))
            finally:
                if proc is not None:
                    _stop(proc)
        extras = {}
        if args.extras:
            extras = {"label_scaling": label_scaling(model),
                      "decoding": decoding(manifest["preprocessing"]["size"])}
    report = {
        "benchmark": "serve-compare",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": _command(args.argv),
        "model": f"{manifest['name']}@{manifest['version']}",
        "model_is_tiny_test_model": manifest["name"] == "tiny-test",
        "labels_per_request": len(labels), "image": "640x480 JPEG (8 textured images)",
        "duration_s_per_point": args.duration, "max_requests_per_point": args.max_requests,
        "total_run_s": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "processor": platform.processor()},
        "notes": args.note,
        "skipped": skipped,
        "results": rows,
        **extras,
    }
    if open_rows:
        rates = open_loop_rates(args, rows)
        report["open_loop"] = {
            "arrivals": args.arrivals, "seed": args.seed, "max_in_flight": args.max_in_flight,
            "drain_timeout_s": loadgen.Load.drain_timeout,
            "rates_rps": [rate for rate, _ in rates],
            "fractions_of_raw_peak": [f for _, f in rates] if rates[0][1] is not None else None,
            "raw_closed_loop_peak_rps": _peak(rows, "raw") or None,
            "results": open_rows}
    report["goals"] = goals(rows, report.get("decoding"))
    code = write_report(Path(args.out), report, markdown)
    figure(report, Path(args.out).with_suffix(".png"))
    return code


# --- label scaling and image decoding (in-process, --extras) --------------------------------
def label_scaling(model: Path, counts=(1, 100, 1000, 10000), repeats: int = 30) -> list[dict]:
    """Per count: cold embedding time (engine.encode_labels on a fresh list), warm per-image
    scoring time (score + rank against the cached matrix) and the whole warm per-image time
    (visual graph + scoring; decode excluded)."""
    from artifact.loader import load_artifact
    from service.pipeline.scoring import rank, score
    from service.runtime import create_engine
    from service.settings import Settings

    artifact = load_artifact(model)
    engine = create_engine(Settings(model=model), artifact)
    engine.warmup()
    size = artifact.preprocessing.size
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    out = []
    for n in counts:
        labels = loadgen.labels(n)  # the engine has no cache: every call is cold
        t0 = time.perf_counter()
        matrix = engine.encode_labels(labels)
        cold = time.perf_counter() - t0
        scoring, whole = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            groups = engine.encode_images(x)
            t1 = time.perf_counter()
            rank(score(groups, matrix)[0], labels, top_k=10)
            t2 = time.perf_counter()
            scoring.append(t2 - t1)
            whole.append(t2 - t0)
        out.append({"labels": n, "cold_embed_ms": round(cold * 1000, 1),
                    "cold_embed_ms_per_1000": round(cold * 1e6 / n, 1),
                    "warm_scoring_ms_per_image": round(float(np.median(scoring)) * 1000, 3),
                    "warm_total_ms_per_image": round(float(np.median(whole)) * 1000, 2)})
        print(f"labels {out[-1]}", flush=True)
    engine.close()
    return out


def decoding(size: int = 224, repeats: int = 5) -> list[dict]:
    """decode_image + preprocess time for 0.3 / 3 / 12 MP JPEG, MPO (a phone's multi-picture
    JPEG, here one frame) and PNG (textured photos)."""
    from artifact.imaging import Preprocessing, decode_image, preprocess
    from benchmarks.decode import SIZES, encoded, textured

    spec = Preprocessing(size=size)
    rng = np.random.default_rng(0)
    out = []
    for mp, (w, h) in SIZES:
        image = textured(w, h, rng)
        for fmt in ("JPEG", "MPO", "PNG"):
            data = encoded(image, fmt)
            took = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                preprocess(decode_image(data, target_size=size), spec)
                took.append(time.perf_counter() - t0)
            out.append({"megapixels": mp, "size": f"{w}x{h}", "format": fmt,
                        "bytes": len(data), "decode_preprocess_ms":
                        round(float(np.median(took)) * 1000, 2)})
            print(f"decode {out[-1]}", flush=True)
    return out


def _command(argv: list[str]) -> str:
    """This run's command line, the --note text elided (it is printed as the notes)."""
    shown = [("'...'" if i and argv[i - 1] == "--note" else a) for i, a in enumerate(argv)]
    return " ".join(["ml2p bench serve-compare", *shown])


def _row(rows: list[dict], system: str, c: int) -> dict | None:
    return next((r for r in rows if r["system"] == system and r["concurrency"] == c), None)


def _peak(rows: list[dict], system: str) -> float:
    return max((r["throughput_rps"] for r in rows if r["system"] == system), default=0.0)


def goals(rows: list[dict], decode: list[dict] | None = None) -> list[dict]:
    """Issue 14's goals, each met / missed with the measured numbers."""
    out = []
    raw_peak = _peak(rows, "raw")
    for system in ("rest", "grpc"):
        served = [r for r in rows if r["system"] == system]
        if not (raw_peak and served):
            continue
        top = max(served, key=lambda r: r["throughput_rps"])
        ratio = top["throughput_rps"] / raw_peak
        out.append({"goal": f"{system} peak throughput >= 90% of raw's peak",
                    "measured": f"{top['throughput_rps']} / {raw_peak} req/s = {ratio:.0%}",
                    "met": ratio >= 0.90})
        if top.get("wall_s"):
            cores = top["server_cpu_cores"] + top["loadgen_cpu_s"] / top["wall_s"]
            out.append({"goal": f"{system}: server + load generator CPU >= 1.9 cores at its peak",
                        "measured": f"{top['server_cpu_cores']} + "
                                    f"{top['loadgen_cpu_s'] / top['wall_s']:.2f} = {cores:.2f} "
                                    f"cores (c={top['concurrency']})",
                        "met": cores >= 1.9})
    for system in ("rest", "grpc"):
        for peer, need in (("naive", 1.1), ("triton", 1.0)):
            for c in (16, 64):
                ours, theirs = _row(rows, system, c), _row(rows, peer, c)
                if not (ours and theirs and theirs["throughput_rps"]):
                    continue
                ratio = ours["throughput_rps"] / theirs["throughput_rps"]
                out.append({"goal": f"{system} >= {need:g}x {peer} throughput with p99 no "
                                    f"higher, c={c}",
                            "measured": f"{ours['throughput_rps']} / {theirs['throughput_rps']}"
                                        f" = {ratio:.2f}x, p99 {ours['p99_ms']} vs "
                                        f"{theirs['p99_ms']} ms",
                            "met": ratio >= need and ours["p99_ms"] <= theirs["p99_ms"]})
    raw1 = _row(rows, "raw", 1)
    for system in ("rest", "grpc"):
        row = _row(rows, system, 1)
        if raw1 and row:
            out.append({"goal": f"{system} p50 at c=1 within 2 ms of raw",
                        "measured": f"{row['p50_ms']} vs {raw1['p50_ms']} ms "
                                    f"({row['p50_ms'] - raw1['p50_ms']:+.2f} ms)",
                        "met": row["p50_ms"] <= raw1["p50_ms"] + 2.0})
    fp32_peak, int8_peak = _peak(rows, "rest"), _peak(rows, "rest-int8")
    if fp32_peak and int8_peak:
        out.append({"goal": "rest on the int8 graph: peak >= 1.4x rest on fp32",
                    "measured": f"{int8_peak} / {fp32_peak} req/s = "
                                f"{int8_peak / fp32_peak:.2f}x",
                    "met": int8_peak >= 1.4 * fp32_peak})
    for fmt in ("JPEG", "MPO"):
        point = next((d for d in decode or [] if d["megapixels"] == "12" and d["format"] == fmt),
                     None)
        if point:
            out.append({"goal": f"12 MP {fmt}: decode + preprocess <= 25 ms median",
                        "measured": f"{point['decode_preprocess_ms']} ms",
                        "met": point["decode_preprocess_ms"] <= 25.0})
    return out


def figure(report: dict, path: Path) -> Path:
    """Throughput against p99 latency, one line per system (closed loop, by concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in SYSTEMS:
        points = sorted((r for r in report["results"] if r["system"] == system),
                        key=lambda r: r["concurrency"])
        if not points:
            continue
        xs, ys = [r["throughput_rps"] for r in points], [r["p99_ms"] for r in points]
        ax.plot(xs, ys, marker="o", label=system)
        for r, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"c={r['concurrency']}", (x, y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("throughput, req/s (closed loop)")
    ax.set_ylabel("p99 latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title(f"Serving comparison, {report['machine']['cpus']} CPUs ({report['created']})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _errors(row: dict) -> str:
    """Errors, and the requests the server shed (HTTP 429 / RESOURCE_EXHAUSTED) beside them."""
    return f"{row['errors']}" + (f" (+{row['rejected']} shed)" if row.get("rejected") else "")


def _open_loop_markdown(report: dict) -> list[str]:
    spec = report.get("open_loop")
    if not spec or not spec.get("results"):
        return []
    rows = report["results"]
    if spec.get("fractions_of_raw_peak"):
        rates = (f"offered rates {' / '.join(f'{f:g}' for f in spec['fractions_of_raw_peak'])} x "
                 f"the raw pipeline's closed-loop peak in this run "
                 f"({spec['raw_closed_loop_peak_rps']} req/s), so nominally "
                 f"{' / '.join(f'{r:g}' for r in spec['rates_rps'])} req/s for every system")
    else:
        rates = f"nominal offered rates {' / '.join(f'{r:g}' for r in spec['rates_rps'])} req/s"
    realised = {}  # nominal rate -> scheduled rates (the same seed gives every system one)
    for r in spec["results"]:
        realised.setdefault(r["offered_rps"], set()).add(r["scheduled_rps"])
    rates += ("; the schedules realised " + " / ".join(
        "/".join(f"{v:g}" for v in sorted(realised[rate])) for rate in sorted(realised))
        + " req/s (arrivals scheduled / point length)")
    lines = [
        "", "## Open loop", "",
        f"{spec['arrivals'].capitalize()} arrivals (seed {spec['seed']}: the same schedule for "
        f"every system) at {rates}; each request is sent at its scheduled time whatever the "
        f"earlier ones are doing, from the same separate load-generator process (raw: in "
        f"process, on threads), at most {spec['max_in_flight']} in flight (an arrival over the "
        f"cap is dropped, not sent), {report['duration_s_per_point']} s and at most "
        f"{report['max_requests_per_point']} arrivals per point, then up to "
        f"{spec['drain_timeout_s']:g} s for the answers still due. Latency runs from each "
        "request's *scheduled* send time (no coordinated omission), over successful answers; "
        "achieved req/s = answers / time from the point's start to its last answer; shed = "
        "HTTP 429 / gRPC RESOURCE_EXHAUSTED; send lag p99 = how late the generator's sends went "
        "out; scheduled req/s = arrivals the schedule held / the point's length (a Poisson "
        "sample of the offered rate, the same for every system); \"x own peak\" = offered "
        "rate / that system's closed-loop peak above.", "",
        "| system | offered req/s | scheduled req/s | x own peak | achieved req/s | p50 ms | "
        "p95 ms | p99 ms | "
        "answers | errors | shed | dropped | send lag p99 ms | mean batch | mean queue ms | "
        "server CPU cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in spec["results"]:
        own = _peak(rows, r["system"])
        x_own = f"{r['offered_rps'] / own:.2f}" if own else "-"
        lines.append(
            f"| {r['system']} | {r['offered_rps']:g} | {r['scheduled_rps']} | {x_own} | "
            f"{r['throughput_rps']} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['requests']} | {r['errors']} | "
            f"{r['rejected']} | {r['dropped']} | {r['send_lag_p99_ms']} | "
            f"{r.get('mean_batch_size') or '-'} | {r.get('mean_queue_ms', '-')} | "
            f"{r.get('server_cpu_cores', '-')} |")
    return lines


def markdown(report: dict) -> str:
    rows = report["results"]
    raw_peak = _peak(rows, "raw")
    lines = [
        f"# Serving comparison ({report['created']})", "",
        f"Command: `{report['command']}`. Model `{report['model']}`"
        + (" (the tiny generated test model)" if report["model_is_tiny_test_model"] else "")
        + f", {report['labels_per_request']} labels per request, {report['image']}, "
        f"{report['machine']['cpus']} CPUs ({report['machine']['platform']}, Python "
        f"{report['machine']['python']}), closed loop"
        + (" then open loop" if report.get("open_loop") else "")
        + f", {report['duration_s_per_point']} s per "
        f"point, whole run {report['total_run_s']} s.", "",
        "| system | c | req/s | vs raw | vs naive | p50 ms | p95 ms | p99 ms | errors | "
        "mean batch | mean queue ms | server CPU cores | loadgen CPU s | server peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        naive = _row(rows, "naive", r["concurrency"])
        vs_raw = f"{r['throughput_rps'] / raw_peak:.0%}" if raw_peak else "-"
        vs_naive = (f"{r['throughput_rps'] / naive['throughput_rps']:.2f}x"
                    if naive and naive["throughput_rps"] else "-")
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['throughput_rps']} | {vs_raw} | "
            f"{vs_naive} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {_errors(r)} | "
            f"{r.get('mean_batch_size') or '-'} | {r.get('mean_queue_ms', '-')} | "
            f"{r.get('server_cpu_cores', '-')} | {r.get('loadgen_cpu_s', '-')} | "
            f"{r.get('server_peak_rss_mb', '-')} |")
    lines += ["", "\"vs raw\" is against raw's best throughput (its saturation point).", "",
              "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {'met' if g['met'] else 'MISSED'} |"
              for g in report["goals"]]
    lines += _open_loop_markdown(report)
    if report.get("label_scaling"):
        lines += ["", "## Label scaling (in-process, one image, median)", "",
                  "| labels | cold embed ms | cold ms per 1,000 labels | warm scoring ms/image "
                  "| warm visual + scoring ms/image |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['labels']} | {r['cold_embed_ms']} | {r['cold_embed_ms_per_1000']} | "
                  f"{r['warm_scoring_ms_per_image']} | {r['warm_total_ms_per_image']} |"
                  for r in report["label_scaling"]]
    if report.get("decoding"):
        lines += ["", "## Image decoding (decode_image + preprocess, median)", "",
                  "| MP | size | format | bytes | ms |", "|---:|---|---|---:|---:|"]
        lines += [f"| {r['megapixels']} | {r['size']} | {r['format']} | {r['bytes']} | "
                  f"{r['decode_preprocess_ms']} |" for r in report["decoding"]]
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {k}: {v}" for k, v in report["skipped"].items()]
    if report["notes"]:
        lines += ["", "## Notes", "", report["notes"]]
    if report.get("reading"):  # written after the run, by whoever read the numbers
        lines += ["", "## Reading", "", report["reading"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("serve-compare", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
