"""GPU check for the torch engine: visual-side parity against CPU reference outputs made on the
CPU machine (`benchmarks/gpu_reference.py`), and throughput at batch 1, 8, 64 in fp32 and fp16
(eager and with CUDA graphs). Needs only torch + numpy + the repository + the bundle.

    python benchmarks/gpu_check.py --bundle benchmarks/gpu_bundle [--device cuda|cpu]

Writes benchmarks/results/gpu_<card>.json (`--device cpu`: gpu_cpu-smoke.json, a smoke run of
the same code path). Exit status 1 when fp32 parity fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FP32_TOL = 1e-4  # as specified (issue 15); TF32 is switched off, cuDNN sums in another order
TOP5_MIN = 0.99


def top5(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.argsort(-np.einsum("bgd,ld->bgl", groups, labels).max(1), 1)[:, :5]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([set(x) == set(y) for x, y in zip(a, b, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "benchmarks" / "gpu_bundle")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(args.bundle / "pylib")]

    import torch

    from models.backbones import create_backbone
    from models.inference import VisualRunner
    from models.tagger import load_checkpoint

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available to torch here; run with --device cpu for a smoke test")
        return 2
    torch.backends.cudnn.allow_tf32 = False  # fp32 parity means fp32 arithmetic
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    if args.device == "cpu":
        torch.set_num_threads(2)

    ref = np.load(args.bundle / "reference.npz")
    images, ref_groups, labels = ref["images"], ref["groups"], ref["labels"]
    ref_top = top5(ref_groups, labels)

    def runner(fp16: bool, graphs: bool) -> VisualRunner:
        tagger = load_checkpoint(args.bundle / "tagger.pt")
        backbone = create_backbone(tagger.config["backbone"],
                                   weights=str(args.bundle / "lite0.pth"))
        tagger.attach_backbone(backbone)
        return VisualRunner(tagger, args.device, fp16=fp16, cuda_graphs=graphs)

    on_gpu = args.device.startswith("cuda")
    modes = [("fp32", False, False), ("fp16", True, False)]
    if on_gpu:
        modes += [("fp32+cudagraphs", False, True), ("fp16+cudagraphs", True, True)]
    parity, speed = {}, []
    for name, fp16, graphs in modes:
        run = runner(fp16, graphs)
        got = np.concatenate([run(images[i:i + 8]) for i in range(0, len(images), 8)])
        parity[name] = {"max_abs_diff": float(np.abs(got - ref_groups).max()),
                        "mean_abs_diff": float(np.abs(got - ref_groups).mean()),
                        "top5_identical": agreement(top5(got, labels), ref_top)}
        print(f"{name:16s} parity: max|Δ| {parity[name]['max_abs_diff']:.2e}, top-5 identical "
              f"{parity[name]['top5_identical']:.3f}", flush=True)
        for batch in args.batches:
            x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
            for _ in range(3):
                run(x)
            runs = args.runs if batch < 64 else max(args.runs // 2, 3)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                run(x)  # numpy in → numpy out: includes the host↔device copies
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            speed.append({"mode": name, "batch": batch, "runs": runs, "median_ms": 1e3 * med,
                          "p10_ms": 1e3 * float(np.percentile(times, 10)),
                          "p90_ms": 1e3 * float(np.percentile(times, 90)),
                          "images_per_s": batch / med})
            print(f"  batch {batch:3d}: {1e3 * med:8.2f} ms  {batch / med:8.1f} img/s", flush=True)
        del run
        if on_gpu:
            torch.cuda.empty_cache()

    fp32_ok = (parity["fp32"]["max_abs_diff"] <= FP32_TOL
               and parity["fp32"]["top5_identical"] >= TOP5_MIN)
    card = torch.cuda.get_device_name(0) if on_gpu else "cpu-smoke"
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    result = {
        "card": card, "device": args.device, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "reference": json.loads((args.bundle / "meta.json").read_text()),
        "images": int(len(images)), "labels": int(len(labels)),
        "parity": parity, "fp32_tolerance": FP32_TOL, "fp32_pass": bool(fp32_ok),
        "throughput": speed,
        "note": "numpy float32 in → numpy float32 out per call (H2D/D2H copies included); "
                "TF32 off; fp16 = whole visual side in half precision; parity vs CPU fp32 "
                "torch outputs computed on the CPU machine",
    }
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'PASS' if fp32_ok else 'FAIL'}: fp32 parity; results in {out}")
    return 0 if fp32_ok else 1


if __name__ == "__main__":
    sys.exit(main())
