"""Training-side `ml2p` sub-commands: data, train, eval, export, quantize, calibrate, card.

Registered by `ml2p_cli` when the training side is installed; torch is only imported inside
the command functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.recipes import REGIMES, apply_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]
EVAL_OUT = "runs/eval/accuracy.json"


def cmd_data(args: argparse.Namespace) -> None:
    if args.dataset == "emojitags":
        from models.data.emojitags import build_emojitags

        build_emojitags(args.out, seed=args.seed, n_train=args.train_scenes,
                        version=args.version)
    else:
        from models.data import load_dataset

        for split in ("train", "val", "test"):
            data = load_dataset(args.dataset, split)
            print(f"{args.dataset}/{split}: {len(data.image_paths)} images, "
                  f"{len(data.label_names)} labels ({int(sum(data.seen))} seen)")


def cmd_train(args: argparse.Namespace) -> None:
    from models.tagger import load_checkpoint, save_checkpoint
    from models.train import TrainConfig
    from models.training_free import train_any

    if args.seed is not None and args.seeds:
        raise SystemExit("ml2p train: give --seed or --seeds, not both")
    recipe = apply_overrides(load_recipe(args.recipe), args.set or [])
    if args.regime:
        recipe["regime"] = args.regime
    # one run per seed, each in OUT/seed<N> (--seeds), or one run in OUT
    runs = [(seed, Path(args.out) / f"seed{seed}") for seed in args.seeds] if args.seeds \
        else [(args.seed, Path(args.out))]
    for seed, out in runs:
        if seed is not None:
            recipe["seed"] = seed
        # trainable heads go through Trainer.fit; a training-free one (ConSE) is set up, saved
        result = train_any(TrainConfig(**recipe), out, resume=not args.restart)
        print(json.dumps(result["history"][-1], indent=1))
        print(f"checkpoint: {result['checkpoint']}")
        if args.half:  # floating tensors stored in fp16: half the file, loads back as fp32
            tagger = load_checkpoint(result["checkpoint"])
            half = Path(result["checkpoint"]).with_name(
                Path(result["checkpoint"]).stem + "-fp16.pt")
            save_checkpoint(tagger, half, history=tagger.history,
                            provenance=tagger.provenance, half=True)
            print(f"fp16 checkpoint: {half}")


def parse_methods(items: list[str]) -> dict[str, list[Path]]:
    """`NAME=CKPT[,CKPT...]` → {name: [checkpoints]} (a repeated name adds checkpoints)."""
    methods: dict[str, list[Path]] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            raise SystemExit(f"--method expects NAME=CKPT[,CKPT...], got {item!r}")
        methods.setdefault(name, []).extend(Path(p) for p in paths.split(",") if p)
    return methods


def cmd_eval(args: argparse.Namespace) -> None:
    if args.variants:  # the artifact's precision variants into the same table
        from models.evaluate import evaluate_variants

        command = " ".join(["ml2p eval --variants", args.variants,
                            *(["--bootstrap", str(args.bootstrap)] if args.bootstrap != 1000
                              else []),
                            *(["--out", args.out] if args.out != EVAL_OUT else [])])
        evaluate_variants(Path(args.variants), Path(args.out), bootstrap=args.bootstrap,
                          command=command)
        print((Path(args.out).with_suffix(".md")).read_text())
        return
    if args.method:  # several methods' checkpoints into one table
        from models.evaluate import evaluate_methods

        methods = parse_methods(args.method)
        if args.checkpoints:
            methods = {"ml2p": [Path(p) for p in args.checkpoints], **methods}
        evaluate_methods(methods, datasets=args.datasets, out=Path(args.out),
                         bootstrap=args.bootstrap)
        print((Path(args.out).with_suffix(".md")).read_text())
        return
    if not args.checkpoints:
        raise SystemExit("ml2p eval: give checkpoints (the default model) or --method NAME=CKPT")
    from models.evaluate import evaluate_checkpoints

    report = evaluate_checkpoints([Path(p) for p in args.checkpoints], datasets=args.datasets,
                                  out=Path(args.out), bootstrap=args.bootstrap)
    print((Path(args.out).with_suffix(".md")).read_text())
    del report


def cmd_export(args: argparse.Namespace) -> None:
    from models.export import export_artifact

    path = export_artifact(Path(args.checkpoint), Path(args.out),
                           calibration_data=args.calibration, accuracy=args.accuracy,
                           variants=tuple(v for v in args.variants.split(",") if v),
                           int8_ranges=args.int8_ranges, name=args.name,
                           version=args.version)
    print(f"artifact: {path}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from models.train import write_checkpoint_calibration

    path = write_checkpoint_calibration(Path(args.checkpoint), Path(args.out))
    print(f"calibration data: {path}")


def cmd_card(args: argparse.Namespace) -> int:
    from models.card import CARD, README, update

    stale = []
    for path in (CARD, README):
        changed = update(path, check=args.check)
        stale += [path.name] if changed else []
        state = ("out of date: run `ml2p card`" if args.check else "rewritten") if changed \
            else "up to date"
        print(f"{path}: {state}")
    return 1 if args.check and stale else 0


def cmd_quantize(args: argparse.Namespace) -> None:
    from models.quantize import choose

    argv = [args.artifact, "--images", str(args.images), "--out", args.out]
    spec = choose(Path(args.artifact), Path(args.out), n_images=args.images, argv=argv)
    print(f"chose {spec['method']} calibration, float32 kept for {spec['exclusion']}: "
          f"{args.out}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the training-side sub-commands on the `ml2p` parser."""
    data = subparsers.add_parser("data", help="build or check a dataset")
    data.add_argument("dataset", choices=["emojitags", "voc2007"])
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--train-scenes", type=int, default=4000,
                      help="EmojiTags training scenes (val 600 and each test split 1000 stay "
                           "as they are)")
    data.add_argument("--version", type=int, default=2, choices=[1, 2],
                      help="EmojiTags protocol: 2 = test scenes in the training art styles + "
                           "the openmoji scenes as test-shift; 1 = test is the openmoji scenes")
    data.add_argument("--out", default=None,
                      help="EmojiTags directory (default $ML2P_CACHE_DIR/emojitags; read it "
                           "back with ML2P_EMOJITAGS_ROOT)")
    data.set_defaults(func=cmd_data)

    train = subparsers.add_parser("train", help="train a head on cached backbone features")
    train.add_argument("--recipe", default="default", help="recipe name or JSON path")
    train.add_argument("--out", required=True, help="run directory (checkpoints, history)")
    train.add_argument("--seed", type=int)
    train.add_argument("--seeds", type=int, nargs="+",
                       help="one run per seed, each in OUT/seed<N> (e.g. --seeds 0 1 2)")
    train.add_argument("--half", action="store_true",
                       help="also write each checkpoint with fp16 storage (<name>-fp16.pt)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe field, e.g. --set model.dim=64 --set lam=0.4")
    train.add_argument("--regime", choices=REGIMES,
                       help="what the head reads besides the backbone's taps (method.md §3): "
                            "visual = (a), visual features only; imagenet-strict / imagenet-all "
                            "= (b), the ImageNet classifier's probabilities without / with the "
                            "classes that name an unseen label (default: the recipe's)")
    train.add_argument("--restart", action="store_true", help="ignore an existing train_state")
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="ZSL/GZSL accuracy table")
    evaluate.add_argument("checkpoints", nargs="*",
                          help="the default model's checkpoints, one per seed")
    evaluate.add_argument("--method", action="append", metavar="NAME=CKPT[,CKPT]",
                          help="a method's checkpoints (one per seed), repeatable: all into one "
                               "table beside a random ranking (positional checkpoints = ml2p)")
    evaluate.add_argument("--datasets", nargs="+",
                          default=["voc2007", "emojitags", "emojitags:test-shift"],
                          help="test splits: a dataset's test, or NAME:SPLIT (EmojiTags' "
                               "held-out art style: emojitags:test-shift)")
    evaluate.add_argument("--out", default=EVAL_OUT,
                          help=f"the table (JSON, and .md beside it); default {EVAL_OUT}, a "
                               "working directory: the committed benchmarks/results/"
                               "accuracy.json (which `make model` puts in the artifact) only "
                               "when named")
    evaluate.add_argument("--bootstrap", type=int, default=1000)
    evaluate.add_argument("--variants", metavar="ARTIFACT",
                          help="instead: each precision variant of ARTIFACT (fp32, fp16, int8) "
                               "on VOC images/val with its change against fp32 and the gate "
                               "for precision=auto; merged into --out")
    evaluate.set_defaults(func=cmd_eval)

    export = subparsers.add_parser("export", help="write the ONNX model artifact")
    export.add_argument("checkpoint")
    export.add_argument("--out", required=True)
    export.add_argument("--calibration", metavar="VAL.npz",
                        help="validation scores/targets for the probability calibration")
    export.add_argument("--accuracy", metavar="ACCURACY.json",
                        help="`ml2p eval` output, stored in the manifest")
    export.add_argument("--variants", default="fp16,int8",
                        help="extra visual graphs, comma-separated (fp16, int8; '' for none)")
    export.add_argument("--name", help="model name (default: the configuration's)")
    export.add_argument("--version", help="model version (default: the configuration's base "
                                          "version + a digest of the weights, e.g. "
                                          "0.0.0+w1a2b3c4d5e)")
    export.add_argument("--int8-ranges", metavar="INT8.json",
                        help="`ml2p quantize` output: build the int8 graph from it (no data)")
    export.set_defaults(func=cmd_export)

    calibrate = subparsers.add_parser(
        "calibrate", help="write a checkpoint's validation scores per (image, label) with the "
                          "labels it trained on: the exporter's --calibration file")
    calibrate.add_argument("checkpoint")
    calibrate.add_argument("--out", required=True, help="the .npz to write")
    calibrate.set_defaults(func=cmd_calibrate)

    card = subparsers.add_parser("card", help="regenerate the model card's result tables "
                                              "from benchmarks/results")
    card.add_argument("--check", action="store_true", help="only say whether it is up to date")
    card.set_defaults(func=cmd_card)

    quantize = subparsers.add_parser(
        "quantize", help="choose the int8 calibration (method, exclusions) on VOC train/val "
                         "and write its ranges for the exporter")
    quantize.add_argument("artifact", help="an artifact directory (its fp32 visual.onnx)")
    quantize.add_argument("--images", type=int, default=128, help="calibration images (train)")
    quantize.add_argument("--out", default="models/weights/default.int8.json")
    quantize.set_defaults(func=cmd_quantize)
