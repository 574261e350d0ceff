"""`ml2p bench client`: what the ml2p-client library costs, and what embed-once / re-score
saves. One `ml2p serve` on the model with its default settings.

1. **Throughput at c = 16**: the load generator's own REST and gRPC senders (pre-encoded
   requests on raw connections / a bare stub) against the same load sent through
   `ml2p_client.AsyncClient` (REST, gRPC; no retries), each a separate process, closed loop
   of `--duration` s with 20 labels per request, in `--rounds` rounds taking turns; medians and
   ranges, and the client's share of the generator's throughput.
2. **Re-tagging a stored collection**: `--images` images (the load generator's 8 pictures,
   cycled) are embedded once through `/v1/embed` (kept as float16 vectors), then tagged with
   100 new labels through `/v1/tag` (c = 16), keeping each image's best `--top-k`, and
   re-scored with 100 other new labels through `/v1/score` (1024 vector sets per request),
   keeping the same number, and once more returning all 100 ranked labels per image; all
   through the client over REST; the time of each and the re-tag / re-score ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import (
    command_main,
    loadgen,
    report_header,
    serve_bench,
    serve_compare,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("rest", "client-rest", "grpc", "client-grpc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(REPO / "models" / "zoo" / "default"))
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000, help="stored collection size")
    parser.add_argument("--top-k", type=int, default=5, help="tags kept per image")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "client.json"))


def throughput(url: str, grpc_target: str, args: argparse.Namespace) -> dict:
    load = loadgen.Load(args.duration, 10**7, concurrency=16)
    rows: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for round_ in range(args.rounds):
        for system in SYSTEMS:
            target = grpc_target if system.endswith("grpc") else url
            rows[system].append(loadgen.run_loadgen(system, target, load))
            print(f"round {round_ + 1} {system}: {rows[system][-1]['throughput_rps']} req/s",
                  flush=True)
    out = {}
    for system, points in rows.items():
        rps = [p["throughput_rps"] for p in points]
        out[system] = {"throughput_rps": statistics.median(rps), "range": [min(rps), max(rps)],
                       "p50_ms": statistics.median(p["p50_ms"] for p in points),
                       "errors": sum(p["errors"] for p in points),
                       "rejected": sum(p["rejected"] for p in points)}
    for protocol in ("rest", "grpc"):
        out[f"client-{protocol}"]["share_of_loadgen"] = round(
            out[f"client-{protocol}"]["throughput_rps"] / out[protocol]["throughput_rps"], 3)
    return out


async def rescore(url: str, count: int, top_k: int) -> dict:
    from ml2p_client import AsyncClient

    pictures = loadgen.images()
    collection = [pictures[k % len(pictures)] for k in range(count)]
    tag_labels = [f"re-tag label {i}" for i in range(100)]
    score_labels = [f"re-score label {i}" for i in range(100)]
    async with AsyncClient(url, timeout=600) as client:
        t0 = time.perf_counter()
        stored = await client.embed(collection, dtype="float16", batch_size=32)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tagged = await client.tag_many(collection, tag_labels, top_k=top_k, concurrency=16)
        tag_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = await client.score(stored, score_labels, top_k=top_k, batch_size=1024)
        score_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranked = await client.score(stored, [f"{t} (all)" for t in score_labels],
                                    batch_size=1024)
        ranked_s = time.perf_counter() - t0
    assert len(tagged) == len(scored) == len(ranked) == count
    assert len(ranked[0].tags) == 100 and len(scored[0].tags) == top_k
    return {"images": count, "labels": 100, "top_k": top_k,
            "vector_bytes_per_image": len(stored.items[0].data),
            "embed_s": round(embed_s, 2), "retag_s": round(tag_s, 2),
            "rescore_s": round(score_s, 3), "retag_over_rescore": round(tag_s / score_s, 1),
            "rescore_all_ranked_s": round(ranked_s, 3),
            "retag_over_rescore_all_ranked": round(tag_s / ranked_s, 1)}


def run(args: argparse.Namespace) -> int:
    model = Path(args.model)
    with tempfile.TemporaryDirectory(prefix="ml2p-client-") as tmp:
        proc, url, grpc_target = serve_bench._start_server(model, Path(tmp))
        try:
            points = throughput(url, grpc_target, args)
            stored = asyncio.run(rescore(url, args.images, args.top_k))
        finally:
            serve_compare._stop(proc)
    report = {**report_header("client", args.argv, model), "concurrency": 16,
              "duration_s": args.duration, "rounds": args.rounds, "throughput": points,
              "rescore": stored,
              "goals": [
                  {"goal": f"client {p} >= 95% of the load generator's throughput at c=16",
                   "value": points[f"client-{p}"]["share_of_loadgen"],
                   "met": points[f"client-{p}"]["share_of_loadgen"] >= 0.95}
                  for p in ("rest", "grpc")] + [
                  {"goal": "re-scoring stored vectors >= 100x faster than re-tagging",
                   "value": stored["retag_over_rescore"],
                   "met": stored["retag_over_rescore"] >= 100}]}
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# The client library and embed-once / re-score", "",
             f"Command: `{report['command']}` ({report['created']}); model {report['model']}; "
             f"{m['cpus']} CPUs, {m['platform']}. One server, default settings.", "",
             f"## Throughput at c = {report['concurrency']} ({report['rounds']} rounds of "
             f"{report['duration_s']:g} s, medians [range])", "",
             "| sender | req/s | p50 ms | errors | rejected | share of the load generator |",
             "|---|---:|---:|---:|---:|---:|"]
    for system, p in report["throughput"].items():
        share = f"{p['share_of_loadgen']:.1%}" if "share_of_loadgen" in p else "reference"
        lines.append(f"| {system} | {p['throughput_rps']} [{p['range'][0]}, {p['range'][1]}] | "
                     f"{p['p50_ms']} | {p['errors']} | {p['rejected']} | {share} |")
    r = report["rescore"]
    lines += ["", f"## Re-tagging {r['images']} stored images with {r['labels']} new labels", "",
              "| step | seconds |", "|---|---:|",
              f"| embed once (`/v1/embed`, float16, {r['vector_bytes_per_image']} B per image) "
              f"| {r['embed_s']} |",
              f"| re-tag through `/v1/tag` (c = 16), best {r['top_k']} per image | "
              f"{r['retag_s']} |",
              f"| re-score the stored vectors through `/v1/score`, best {r['top_k']} per image "
              f"| {r['rescore_s']} |",
              f"| the same, all 100 labels ranked per image (10⁶ tags in the answers) | "
              f"{r['rescore_all_ranked_s']} |", "",
              f"Re-tag / re-score: **{r['retag_over_rescore']}×** (all labels returned: "
              f"{r['retag_over_rescore_all_ranked']}×).", "", "## Goals", ""]
    lines += [f"- {g['goal']}: {g['value']} — {'met' if g['met'] else 'not met'}"
              for g in report["goals"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("client", __doc__, add_arguments, run, argv)
