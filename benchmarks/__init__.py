"""Benchmarks: the paper comparison, the serving benchmarks and their load generator, the
engines and precision variants, the GPU check and the EmojiTags diagnostics.

Each is a module with its own `main(argv)` (`python -m benchmarks.NAME --help`); `COMMANDS`
registers them as `ml2p bench NAME`, where the module is imported only when its command runs
(several need the training extra, or load the full model). Results: `benchmarks/results/`.
"""

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

# `ml2p bench NAME` -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("benchmarks.serve_bench", "REST / gRPC / in-process throughput and latency at "
                                        "several concurrencies"),
    "serve-compare": ("benchmarks.serve_compare", "the service beside the raw pipeline, a "
                                                  "naive FastAPI server and Triton, one run"),
    "policy": ("benchmarks.policy", "execution policies (inference workers, threads, batch cap) "
                                    "measured side by side on this CPU"),
    "decode": ("benchmarks.decode", "JPEG decoding: Pillow vs simplejpeg speed, and the draft "
                                    "scale judged by paired VOC mAP"),
    "stalls": ("benchmarks.stalls", "tagging with new labels while a 20,000-label vocabulary "
                                    "is stored; single flight of identical misses"),
    "uploads": ("benchmarks.uploads", "a burst of large uploads (REST and gRPC) against the "
                                      "memory bound the settings give"),
    "profile": ("benchmarks.profile", "the server at saturation under py-spy: where its time "
                                      "goes (speedscope profile + summary)"),
    "client": ("benchmarks.client_bench", "the client library beside the load generator at "
                                          "c = 16, and re-scoring stored vectors against "
                                          "re-tagging"),
    "paper": ("benchmarks.paper", "the paper's comparison: ConSE, Fast0Tag, LESA, BiAM beside "
                                  "ML2P (accuracy, params, GFLOPs, latency)"),
    "select": ("benchmarks.selection", "candidate training recipes compared on VOC validation "
                                       "data carved from train (how the shipped recipe is "
                                       "chosen)"),
    "engines": ("benchmarks.engines", "engines and precision variants of one artifact: "
                                      "latency, throughput, agreement with fp32"),
    "emoji-diagnostics": ("benchmarks.emoji_diagnostics", "where EmojiTags loses its signal: "
                                                          "probes, ceilings, scene factors"),
    "autoscale": ("benchmarks.autoscale_sim", "replicas for a request rate, and the "
                                              "autoscaler of deploy/k8s under a step in load, "
                                              "simulated from the measured service times"),
    "screenshot": ("benchmarks.demo_page", "the demo page in headless Chromium, in use on a "
                                           "scikit-image sample photo (docs/demo.png)"),
    "explain": ("benchmarks.explain", "relevance maps: the pointing game on VOC (seen and unseen "
                                      "labels, against the centre) and their serving cost"),
    "gpu-reference": ("benchmarks.gpu_reference", "the CPU reference bundle the GPU check "
                                                  "compares against"),
}


def command_main(name: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[argparse.Namespace], object], argv: list[str] | None) -> int:
    """A benchmark's `main`: parse `argv` (default: the process's arguments) with the module's
    flags and run it; `args.argv` keeps the arguments, so results can name their command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"ml2p bench {name}", description=doc.split("\n")[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv, argparse.Namespace(argv=argv)))
    return result if isinstance(result, int) else 0


def write_report(out: Path, report: dict, markdown: Callable[[dict], str]) -> int:
    """`out` (JSON) and the same name with `.md` (`markdown(report)`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def report_header(name: str, argv: list[str], model: Path) -> dict:
    """The fields every results file starts with: the benchmark, its command, when, the model
    (`name@version` from its manifest) and the machine."""
    manifest = json.loads((Path(model) / "manifest.json").read_text())
    return {"benchmark": name, "command": " ".join([f"ml2p bench {name}", *argv]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": f"{manifest['name']}@{manifest['version']}",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()}}
