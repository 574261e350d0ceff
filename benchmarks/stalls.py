"""`ml2p bench stalls`: tagging with new labels while a large vocabulary is being stored.

One `ml2p serve` on the model with its default settings. The load: `--concurrency` clients in
a closed loop, each request one 640 x 480 JPEG with 20 labels, of which `--new` were never
seen before (so each request needs the text graph), with a per-request deadline
(`timeout_ms`). Three phases, reported side by side:
- **quiet**: the load alone, `--duration` s;
- **storing**: `PUT /v1/vocabularies` of `--vocabulary` new labels, then the same load for
  `--duration` s while the vocabulary is embedded in the background; then how long the
  vocabulary took to be ready (a tag request with it answers);
- **single flight**: ten concurrent identical requests whose `--new` labels nobody asked for
  before; the label-embedding counter (`ml2p_label_cache_misses_total`) must grow by `--new`,
  not ten times that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import (
    command_main,
    loadgen,
    report_header,
    serve_bench,
    serve_compare,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]


def _misses(url: str) -> float:
    return serve_bench._metric_sum(url, "ml2p_label_cache_misses_total")


async def _load(client, images: list[bytes], concurrency: int, duration: float, new: int,
                deadline_ms: float, tag: str) -> dict:
    """Closed loop; every request carries `new` labels never sent before."""
    fixed = loadgen.labels(20 - new)
    latencies, statuses = [], []
    stop = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker(w: int) -> None:
        while time.perf_counter() < stop:
            k = next(counter)
            labels = fixed + [f"{tag} request {k} label {j}" for j in range(new)]
            t0 = time.perf_counter()
            reply = await client.post("/v1/tag", files={"image": ("i.jpg", images[k % 8])},
                                      data={"labels_json": json.dumps(labels),
                                            "timeout_ms": str(deadline_ms)})
            latencies.append(time.perf_counter() - t0)
            statuses.append(reply.status_code)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = [t for t, s in zip(latencies, statuses, strict=True) if s == 200]
    p50, p99 = (np.percentile(np.asarray(ok) * 1000, [50, 99]) if ok else (0.0, 0.0))
    return {"requests": len(statuses), "answered_200": len(ok),
            "deadline_missed_504": statuses.count(504),
            "other_errors": len(statuses) - len(ok) - statuses.count(504),
            "throughput_rps": round(len(ok) / elapsed, 1), "p50_ms": round(float(p50), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(max(latencies) * 1000, 1)}


async def _phases(url: str, args: argparse.Namespace) -> dict:
    import httpx

    images = loadgen.images()
    out: dict = {}
    limits = httpx.Limits(max_connections=args.concurrency + 12)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        fixed = loadgen.labels(20 - args.new)
        await client.post("/v1/tag", files={"image": ("i.jpg", images[0])},
                          data={"labels_json": json.dumps(fixed)})  # the fixed labels cached
        out["quiet"] = await _load(client, images, args.concurrency, args.duration, args.new,
                                   args.deadline_ms, "quiet")
        print(f"quiet {out['quiet']}", flush=True)

        vocabulary = [f"stored vocabulary label {i}" for i in range(args.vocabulary)]
        misses_before = _misses(url)
        t0 = time.perf_counter()
        put = await client.put("/v1/vocabularies/bench-big", json={"labels": vocabulary})
        put_s = time.perf_counter() - t0
        put.raise_for_status()
        out["storing"] = await _load(client, images, args.concurrency, args.duration,
                                     args.new, args.deadline_ms, "storing")
        embedded_during = _misses(url) - misses_before  # counted when queued, not when done
        ready = await client.post("/v1/tag", files={"image": ("i.jpg", images[0])},
                                  data={"vocabulary": "bench-big", "top_k": "5"})
        ready.raise_for_status()
        out["storing"] |= {"vocabulary_labels": args.vocabulary,
                           "put_answered_ms": round(put_s * 1000, 1),
                           "embeddings_requested_during_load": int(embedded_during),
                           "vocabulary_ready_after_s": round(time.perf_counter() - t0, 1)}
        print(f"storing {out['storing']}", flush=True)

        labels = fixed + [f"single flight label {j}" for j in range(args.new)]
        before = _misses(url)
        replies = await asyncio.gather(*(
            client.post("/v1/tag", files={"image": ("i.jpg", images[k % 8])},
                        data={"labels_json": json.dumps(labels)}) for k in range(10)))
        out["single_flight"] = {"requests": 10, "new_labels": args.new,
                                "answered_200": sum(r.status_code == 200 for r in replies),
                                "labels_embedded": int(_misses(url) - before)}
        print(f"single flight {out['single_flight']}", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench stalls`."""
    parser.add_argument("--model", default=str(REPO / "models" / "zoo" / "default"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--new", type=int, default=5, help="new labels per request (of 20)")
    parser.add_argument("--deadline-ms", type=float, default=5000.0)
    parser.add_argument("--vocabulary", type=int, default=20000, help="labels stored")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stalls.json"))


def run(args: argparse.Namespace) -> int:
    from service.settings import Settings

    model = Path(args.model)
    with tempfile.TemporaryDirectory(prefix="ml2p-stalls-") as tmp:
        proc, url, _ = serve_bench._start_server(
            model, Path(tmp), {"max_vocabulary_labels": max(args.vocabulary, 20000)})
        try:
            phases = asyncio.run(_phases(url, args))
        finally:
            serve_compare._stop(proc)
    report = {
        **report_header("stalls", args.argv, model),
        "label_workers": Settings().label_workers_count, "concurrency": args.concurrency,
        "new_labels_per_request": args.new, "deadline_ms": args.deadline_ms,
        "duration_s": args.duration, **phases,
    }
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    q, s, f = report["quiet"], report["storing"], report["single_flight"]
    lines = [f"# Tagging while a vocabulary is stored ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`, "
             f"{report['machine']['cpus']} CPUs, {report['label_workers']} label-embedding "
             f"worker(s) (the default). {report['concurrency']} clients in a closed loop, each "
             f"request one 640x480 JPEG with 20 labels of which "
             f"{report['new_labels_per_request']} are new (never sent before), deadline "
             f"{report['deadline_ms']:g} ms (`timeout_ms`), {report['duration_s']:g} s per "
             "phase; latency over the 200 answers.", "",
             "| phase | requests | 200 | deadline missed (504) | other errors | req/s | "
             "p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in (("quiet", q), (f"storing {s['vocabulary_labels']} labels", s)):
        lines.append(f"| {name} | {row['requests']} | {row['answered_200']} | "
                     f"{row['deadline_missed_504']} | {row['other_errors']} | "
                     f"{row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['max_ms']} |")
    lines += ["", f"The `PUT` answered in {s['put_answered_ms']} ms; "
              f"{s['embeddings_requested_during_load']} label embeddings were requested from "
              f"its start to the end of the storing phase (the vocabulary's labels and the "
              f"requests' new ones, counted when queued); the vocabulary was ready (a tag "
              f"request with it answered) {s['vocabulary_ready_after_s']} s after the `PUT`.",
              "",
              f"Single flight: {f['requests']} concurrent identical requests with "
              f"{f['new_labels']} new labels: {f['answered_200']} answered, "
              f"**{f['labels_embedded']}** labels embedded (the counter "
              "`ml2p_label_cache_misses_total`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("stalls", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
