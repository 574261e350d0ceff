"""`ml2p bench profile`: where the server's time goes at saturation, sampled by py-spy.

Starts `ml2p serve` on `--model`, warms it up, then drives it with the load generator (a
separate process, closed loop at `--concurrency`) for `--duration` seconds while `py-spy
record` samples the server's threads (`--rate` per second; idle threads are not sampled, so
every sample is a busy thread). Writes the samples as a speedscope profile
(`OUT.speedscope.json`, open it at speedscope.app or in any speedscope viewer) and a summary
(`OUT.json` + `OUT.md`): per thread and per function, the share of busy samples that were in
it (inclusive) and that were its own code (self), beside the throughput reached while sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import command_main, loadgen, serve_bench, write_report

REPO = Path(__file__).resolve().parents[1]
TOP = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench profile`."""
    parser.add_argument("--model", help="artifact dir (default: ML2P_MODEL, else a tiny "
                                        "generated test model)")
    parser.add_argument("--protocol", choices=["rest", "grpc"], default="rest")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds sampled")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load first")
    parser.add_argument("--labels", type=int, default=20, help="candidate labels per request")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", help="output stem (default benchmarks/results/"
                                      "profile_PROTOCOL_cC)")


# Frames every busy sample of a thread passes through (py-spy's thread frame, thread start-up,
# the command, the event loop's own run loop, the executor's worker loop): left out of the
# inclusive table, which they would top.
GENERIC = ("thread (", "threading.py:", "<frozen runpy>", "asyncio/runners.py:",
           "futures/thread.py:", "ml2p_cli.py:", "service/cli.py:", "BaseEventLoop.run_forever",
           "BaseEventLoop.run_until_complete")


def summarize(profile: dict) -> dict:
    """Busy thread-seconds per thread and per function from a speedscope document."""
    frames = profile["shared"]["frames"]
    threads: Counter = Counter()
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0.0
    for thread in profile["profiles"]:
        name = re.sub(r"^Thread \d+ ", "", thread.get("name", "?")).strip('"')
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            total += weight
            threads[name] += weight
            names = [_frame_name(frames[i]) for i in stack]
            for function in set(names):
                if not function.startswith(GENERIC[0]) and not any(g in function
                                                                   for g in GENERIC[1:]):
                    inclusive[function] += weight
            if names:
                own[names[-1]] += weight

    def shares(counter: Counter) -> list[dict]:
        return [{"name": k, "share": round(v / total, 4)} for k, v in counter.most_common(TOP)]

    return {"busy_thread_seconds": round(total, 2), "threads": shares(threads),
            "inclusive": shares(inclusive), "self": shares(own)}


def _frame_name(frame: dict) -> str:
    parts = Path(frame.get("file") or "?").parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts \
        else "/".join(parts[-2:])
    return f"{frame['name']} ({short}:{frame.get('line', '?')})"


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Server profile ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`, "
             f"{report['protocol']} at concurrency {report['concurrency']}, "
             f"{report['labels_per_request']} labels per request, {report['image']}; "
             f"{report['machine']['cpus']} CPUs. py-spy {report['py_spy']} sampled the server's "
             f"busy threads at {report['rate']} Hz for {report['duration_s']} s: "
             f"{s['busy_thread_seconds']} busy thread-seconds "
             f"({s['busy_thread_seconds'] / report['duration_s']:.2f} threads busy on average), "
             f"while the load generator got "
             f"{report['throughput_rps']} req/s (p50 {report['p50_ms']} ms, p99 "
             f"{report['p99_ms']} ms; py-spy's own sampling takes some CPU too). "
             f"Share = fraction of the busy samples. The samples: "
             f"`{Path(report['speedscope']).name}` (speedscope format).", "",
             "## Threads", "", "| thread | share |", "|---|---:|"]
    lines += [f"| {t['name']} | {t['share']:.1%} |" for t in s["threads"]]
    for title, key in (("Functions, inclusive (the function or anything it called)",
                        "inclusive"), ("Functions, self (its own code)", "self")):
        lines += ["", f"## {title}", "", "| function | share |", "|---|---:|"]
        lines += [f"| `{f['name']}` | {f['share']:.1%} |" for f in s[key]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy; it is in the dev extra)")
    stem = Path(args.out or REPO / "benchmarks" / "results" /
                f"profile_{args.protocol}_c{args.concurrency}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    speedscope = stem.with_suffix(".speedscope.json")
    labels = loadgen.labels(args.labels)
    with tempfile.TemporaryDirectory(prefix="ml2p-profile-") as tmp:
        workdir = Path(tmp)
        model = serve_bench._resolve_model(args.model, workdir)
        proc, url, grpc_target = serve_bench._start_server(model, workdir)
        target = url if args.protocol == "rest" else grpc_target
        try:
            loadgen.run_loadgen(args.protocol, target, loadgen.Load(
                args.warmup, 10**7, concurrency=args.concurrency), len(labels))
            sampler = subprocess.Popen(
                [py_spy, "record", "--pid", str(proc.pid), "--rate", str(args.rate),
                 "--duration", str(int(args.duration)), "--format", "speedscope",
                 "--threads", "--output", str(speedscope)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # py-spy attaches before the measured load starts
            point = loadgen.run_loadgen(args.protocol, target, loadgen.Load(
                args.duration, 10**7, concurrency=args.concurrency), len(labels))
            _, err = sampler.communicate(timeout=args.duration + 60)
            if sampler.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
            manifest = json.loads((model / "manifest.json").read_text())
        finally:
            proc.terminate()
            proc.wait(30)
    version = subprocess.run([py_spy, "--version"], capture_output=True, text=True).stdout
    report = {
        "command": " ".join(["ml2p bench profile", *args.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": f"{manifest['name']}@{manifest['version']}", "protocol": args.protocol,
        "concurrency": args.concurrency, "duration_s": args.duration, "rate": args.rate,
        "labels_per_request": len(labels), "image": "640x480 JPEG (8 textured images)",
        "py_spy": version.strip().split()[-1] if version else "?",
        "throughput_rps": point["throughput_rps"], "p50_ms": point["p50_ms"],
        "p99_ms": point["p99_ms"], "speedscope": str(speedscope.relative_to(REPO))
        if speedscope.is_relative_to(REPO) else str(speedscope),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "summary": summarize(json.loads(speedscope.read_text())),
    }
    return write_report(stem.with_suffix(".json"), report, markdown)


def main(argv: list[str] | None = None) -> int:
    return command_main("profile", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
