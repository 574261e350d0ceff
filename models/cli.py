"""Training-side `ml2p` subcommands: data, train, eval, export, bench paper.

Imported lazily by `service.cli`; torch is only imported inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"
WEIGHTS = Path(__file__).parent / "weights"
REPO = Path(__file__).resolve().parents[1]


def load_recipe(name_or_path: str) -> dict:
    """A training recipe by name (models/recipes/NAME.json) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
        raise SystemExit(f"no recipe {name_or_path!r} (expected a JSON file; known: {known})")
    return json.loads(path.read_text())


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`key=value` / `model.dim=64` overrides; values parsed as JSON when they parse."""
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = recipe
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return recipe


def cmd_data(args: argparse.Namespace) -> None:
    if args.dataset == "emojitags":
        from models.data.emojitags import build_emojitags

        build_emojitags(seed=args.seed)
    else:
        from models.data import load_dataset

        for split in ("train", "val", "test"):
            data = load_dataset(args.dataset, split)
            print(f"{args.dataset}/{split}: {len(data.image_paths)} images, "
                  f"{len(data.label_names)} labels ({int(sum(data.seen))} seen)")


def cmd_train(args: argparse.Namespace) -> None:
    from models.train import TrainConfig, train

    recipe = apply_overrides(load_recipe(args.recipe), args.set or [])
    if args.seed is not None:
        recipe["seed"] = args.seed
    config = TrainConfig(**recipe)
    result = train(config, Path(args.out), resume=not args.restart)
    print(json.dumps(result["history"][-1], indent=1))
    print(f"checkpoint: {result['checkpoint']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from models.evaluate import evaluate_checkpoints

    report = evaluate_checkpoints([Path(p) for p in args.checkpoints], datasets=args.datasets,
                                  out=Path(args.out), bootstrap=args.bootstrap)
    print((Path(args.out).with_suffix(".md")).read_text())
    del report


def cmd_export(args: argparse.Namespace) -> None:
    from models.export import export_artifact

    path = export_artifact(Path(args.checkpoint), Path(args.out))
    print(f"artifact: {path}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the training-side subcommands on the `ml2p` parser."""
    data = subparsers.add_parser("data", help="build or check a dataset")
    data.add_argument("dataset", choices=["emojitags", "voc2007"])
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    train = subparsers.add_parser("train", help="train a head on cached backbone features")
    train.add_argument("--recipe", default="default", help="recipe name or JSON path")
    train.add_argument("--out", required=True, help="run directory (checkpoints, history)")
    train.add_argument("--seed", type=int)
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe field, e.g. --set model.dim=64 --set lam=0.4")
    train.add_argument("--restart", action="store_true", help="ignore an existing train_state")
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="ZSL/GZSL accuracy table")
    evaluate.add_argument("checkpoints", nargs="+", help="one checkpoint per seed")
    evaluate.add_argument("--datasets", nargs="+", default=["voc2007", "emojitags"])
    evaluate.add_argument("--out", default=str(REPO / "benchmarks/results/accuracy.json"))
    evaluate.add_argument("--bootstrap", type=int, default=1000)
    evaluate.set_defaults(func=cmd_eval)

    export = subparsers.add_parser("export", help="write the ONNX model artifact")
    export.add_argument("checkpoint")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> None:
    """Standalone entry (the `ml2p` CLI normally registers these commands itself)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="ml2p-train")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
