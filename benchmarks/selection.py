"""Choosing the shipped recipe on validation data: candidate recipes trained and compared on
the validation split carved from VOC train (never on `images/val`, the test split).

Each candidate is the default recipe with the settings it names changed (`CANDIDATES`, or `--set`
NAME=KEY=VALUE[,KEY=VALUE...] for more); each trains with `ml2p train`'s trainer into
`--runs`/NAME/seed<N> (resumed or reused when already there) and is read back from its
history: the last epoch's validation ZSL / GZSL mAP, the mean over `--seeds`. ConSE (all
ImageNet classes, raw MiniLM vectors: the reference of `accuracy.md`) is scored on the same
validation images. Writes `benchmarks/results/selection.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import command_main, write_report
from models.recipes import apply_override_dict, load_recipe
from models.selection import markdown

RESULTS = Path(__file__).parent / "results"
# name -> (what it tries, recipe settings over the default)
SOFTMAX = {"model.head_kwargs.group_softmax": True}
CANDIDATES: dict[str, tuple[str, dict]] = {
    "lr1e-3": ("released group attention, learning rate 1e-3 (the recipe until this "
               "selection)", {"lr": 0.001}),
    "lr3e-3": ("released group attention, lr 3e-3 (the 1-epoch ablation's best)",
               {"lr": 0.003}),
    "softmax-lr1e-3": ("softmax group attention, lr 1e-3", {**SOFTMAX, "lr": 0.001}),
    "softmax-lr3e-3": ("softmax group attention, lr 3e-3", {**SOFTMAX, "lr": 0.003}),
    "softmax-lr3e-3-8ep": ("softmax group attention, lr 3e-3, 8 epochs",
                           {**SOFTMAX, "lr": 0.003, "epochs": 8}),
    "softmax-label-bce": ("softmax group attention, lr 3e-3, + a per-label cross-image BCE "
                          "term (weight 1)", {**SOFTMAX, "lr": 0.003, "label_bce_weight": 1.0}),
    "softmax-distill": ("softmax group attention, lr 3e-3, + ImageNet distillation (weight "
                        "0.5)", {**SOFTMAX, "lr": 0.003, "distill_weight": 0.5}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        help=f"which candidates (default all: {', '.join(CANDIDATES)})")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=K=V[,K=V]",
                        help="another candidate: NAME with recipe settings (values JSON)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default="runs/select", help="run directories (cached)")
    parser.add_argument("--out", default=str(RESULTS / "selection.json"))


def parse_extra(items: list[str]) -> dict[str, tuple[str, dict]]:
    extra = {}
    for item in items:
        name, _, settings = item.partition("=")
        pairs = (pair.partition("=") for pair in settings.split(",") if pair)
        overrides = {}
        for key, _, raw in pairs:
            try:
                overrides[key] = json.loads(raw)
            except json.JSONDecodeError:
                overrides[key] = raw
        extra[name] = (f"--set {item}", overrides)
    return extra


def conse_on_val() -> dict:
    from models.evaluate import INCLUSION, conse_scores
    from models.metrics import evaluate_zsl_gzsl
    from models.train import load_split

    split = load_split("voc2007", "val", "efficientnet_lite0")
    result = evaluate_zsl_gzsl(conse_scores(split), split.targets, split.label_names,
                               split.seen, include=INCLUSION)
    return {"zsl": result["zsl"]["map"], "gzsl": result["gzsl"]["map"],
            "images": result["gzsl"]["images"]}


def run(args: argparse.Namespace) -> dict:
    from models.train import TrainConfig
    from models.training_free import train_any

    candidates = {**{n: CANDIDATES[n] for n in args.candidates}, **parse_extra(args.set)}
    started = time.perf_counter()
    report: dict = {"benchmark": "select", "command": " ".join(["ml2p bench select",
                                                                *args.argv]),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "split": "voc2007 val (carved from images/train by VOC id)",
                    "seeds": args.seeds, "candidates": {}}
    for name, (what, overrides) in candidates.items():
        rows = []
        for seed in args.seeds:
            recipe = apply_override_dict(load_recipe("default"), {**overrides, "seed": seed})
            tick = time.perf_counter()
            result = train_any(TrainConfig(**recipe), Path(args.runs) / name / f"seed{seed}")
            last = result["history"][-1]
            rows.append({"seed": seed, "epochs": last["epoch"],
                         "seconds": round(time.perf_counter() - tick, 1),
                         "train_seconds": round(sum(h["seconds"] for h in result["history"]), 1),
                         **{s: last["val"]["voc2007"][s]["map"] for s in ("zsl", "gzsl")}})
        report["candidates"][name] = {
            "what": what, "settings": overrides, "runs": rows,
            **{s: float(np.mean([r[s] for r in rows])) for s in ("zsl", "gzsl")}}
    report["conse_all_classes"] = conse_on_val()
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(Path(args.out), report, markdown)
    print(Path(args.out).with_suffix(".md").read_text())
    return report


def main(argv: list[str] | None = None) -> int:
    return command_main("select", __doc__, add_arguments, run, argv)
