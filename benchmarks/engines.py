"""Engine benchmark: latency at batch 1 and throughput at batch 32 for every engine / variant
available here, with GFLOPs per image and the accuracy delta vs the fp32 graph.

    python -m benchmarks.engines [--model models/zoo/default] [--runs 20] [--threads 2]

Writes benchmarks/results/engines.json and engines.md. Without --model it uses
models/zoo/default when present, else exports an untrained seeded Tagger to a temp dir (said in
the output). Images: real VOC images/val (random when VOC is absent).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(fn, x, runs: int) -> dict:  # noqa: ANN001
    fn(x)  # warm-up
    fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    q = np.percentile(times, [10, 90])
    return {"median_ms": 1e3 * med, "p10_ms": 1e3 * q[0], "p90_ms": 1e3 * q[1],
            "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times), "runs": runs,
            "images_per_s": len(x) / med}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "engines")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from artifact.loader import load_artifact
    from models.export import (
        export_artifact,
        sample_images,
        scores_of,
        tokenize,
        top5_agreement,
        vocabulary_texts,
    )
    from service.settings import Settings

    art = args.model or REPO / "models" / "zoo" / "default"
    source = str(art)
    if not (art / "manifest.json").exists():
        from models.tagger import build_tagger

        torch.manual_seed(0)
        recipe = json.loads((REPO / "models/recipes/default.json").read_text())["model"]
        art = export_artifact(build_tagger(recipe).eval(),
                              Path(tempfile.mkdtemp()) / "art", timing_runs=2)
        source = "untrained Tagger (default recipe architecture, seed 0), exported to a temp dir"
    artifact = load_artifact(art)
    m = artifact.manifest
    images = sample_images(32, "val")
    labels = vocabulary_texts()[0][:200]

    import onnxruntime as ort

    def ort_session(path: Path):  # noqa: ANN202
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"image": x})[0]

    runners: dict[str, tuple[str, object]] = {}
    for variant, info in (m.variants or {}).items():
        runners[f"onnxruntime-cpu/{variant}"] = (variant, ort_session(art / info.file))
    if not runners:
        runners["onnxruntime-cpu/fp32"] = ("fp32", ort_session(art / m.files.visual))
    from service.runtime.torch_engine import TorchEngine

    torch_engine = TorchEngine(artifact, Settings(model=art, engine="torch",
                                                  intra_op_threads=args.threads), device="cpu")
    runners["torch-cpu/fp32"] = ("fp32", torch_engine.encode_images)

    ids, mask = tokenize(art / m.files.tokenizer, labels)
    text = ort.InferenceSession(str(art / m.files.text), providers=["CPUExecutionProvider"])
    label_vecs = text.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    ref = runners["onnxruntime-cpu/fp32"][1](images)
    ref_scores = scores_of(ref, label_vecs)

    rows = []
    for name, (variant, fn) in runners.items():
        out = fn(images)
        agreement = top5_agreement(ref_scores, scores_of(out, label_vecs))
        spec = (m.variants or {}).get(variant) if name.startswith("onnx") else None
        measured = spec.accuracy if spec is not None else None
        row = {"engine": name, "variant": variant,
               "gflops_per_image": m.gflops.image,
               "batch1": timed(fn, images[:1], args.runs),
               "batch4": timed(fn, images[:4], args.runs),
               "batch32": timed(fn, images, max(args.runs // 4, 5)),
               "accuracy_delta": {**agreement,
                                  "max_abs_diff_groups": float(np.abs(out - ref).max()),
                                  "reference": "onnxruntime-cpu/fp32, 32 VOC val images, "
                                               "200 labels"},
               "accuracy": measured.model_dump() if measured is not None else None}
        rows.append(row)
        print(f"{name:24s} b1 {row['batch1']['median_ms']:7.1f} ms   "
              f"b32 {row['batch32']['images_per_s']:6.1f} img/s   "
              f"top5 {agreement['top5_identical']:.3f}", flush=True)
    text_lat = timed(lambda x: text.run(None, {"input_ids": x[0], "attention_mask": x[1]}),
                     tokenize(art / m.files.tokenizer, labels[:1]), args.runs)
    command = " ".join(["ml2p bench engines", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifact": source, "name": m.name, "version": m.version,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": args.threads, "python": platform.python_version(),
                    "onnxruntime": ort.__version__, "torch": torch.__version__},
        "gflops": m.gflops.model_dump(),
        "text_batch1": text_lat,
        "rows": rows,
        "note": "median of runs (batch 1: --runs, batch 32: runs/4, at least 5), p10/p90 "
                "spread; accuracy delta = top-5 label-set agreement vs the fp32 ONNX graph",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Engines ({m.name} {m.version}; artifact: {source})", "",
             f"CPU, {args.threads} threads, onnxruntime {ort.__version__}, torch "
             f"{torch.__version__}. GFLOPs/image {m.gflops.image:.3f}, GFLOPs/label "
             f"{m.gflops.label:.4f} at {m.gflops.label_tokens} tokens.", "",
             "| engine | batch 1 latency ms (p10–p90) | batch 4 img/s | batch 32 img/s | "
             "top-5 identical (200 labels) | max abs Δ | VOC images/val ZSL / GZSL mAP "
             "(change) | gate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b1, b4, b32, a = r["batch1"], r["batch4"], r["batch32"], r["accuracy_delta"]
        acc = r["accuracy"]
        measured = "not measured" if acc is None else (
            f"{acc['zsl_map']} / {acc['gzsl_map']} ({acc['zsl_change']:+.2f} / "
            f"{acc['gzsl_change']:+.2f})")
        verdict = "-" if acc is None or r["variant"] == "fp32" else (
            "passed" if acc["gate"]["passed"] else "failed")
        lines.append(f"| {r['engine']} | {b1['median_ms']:.1f} ({b1['p10_ms']:.1f}–"
                     f"{b1['p90_ms']:.1f}) | {b4['images_per_s']:.1f} | "
                     f"{b32['images_per_s']:.1f} | {a['top5_identical']:.3f} | "
                     f"{a['max_abs_diff_groups']:.2g} | {measured} | {verdict} |")
    lines += ["", f"Text graph, one label: {text_lat['median_ms']:.1f} ms median.", "",
              f"Command: `{command}` ({result['created']}). VOC mAP and the gate: "
              "`ml2p eval --variants` (benchmarks/results/accuracy.md), recorded in the "
              "manifest."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
