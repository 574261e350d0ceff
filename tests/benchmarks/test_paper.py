"""`ml2p bench paper` (benchmarks/paper.py): checkpoints cached by the hash of their training
configuration, recipes as override sets over the default, the table writer and the figure,
the CLI wiring (fast, no training)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import paper as bench_paper
from models.train import TrainConfig


def test_checkpoint_cache_by_config_hash(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("ML2P_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_train(config: TrainConfig, out_dir: Path) -> None:
        calls.append(config.seed)
        torch.save({"seed": config.seed}, Path(out_dir) / "model.pt")

    config = bench_paper.resolve_config("fast0tag", epochs=1, seed=0)
    path, cached = bench_paper.ensure_checkpoint(config, fake_train)
    assert not cached and path.exists() and calls == [0]
    assert path.parent == tmp_path / "checkpoints" / bench_paper.config_hash(config)
    saved = json.loads((path.parent / "config.json").read_text())
    assert saved["model"]["head"] == "fast0tag" and saved["epochs"] == 1
    again, cached = bench_paper.ensure_checkpoint(
        bench_paper.resolve_config("fast0tag", epochs=1, seed=0), fake_train)
    assert cached and again == path and calls == [0]  # reused, not retrained
    other, cached = bench_paper.ensure_checkpoint(
        bench_paper.resolve_config("fast0tag", epochs=1, seed=1), fake_train)
    assert not cached and other != path and calls == [0, 1]


def test_missing_checkpoints_once_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--jobs trains each missing configuration once; cached ones are skipped."""
    monkeypatch.setenv("ML2P_CACHE_DIR", str(tmp_path))
    runs = bench_paper.plan_runs("small")
    todo = bench_paper.missing_checkpoints(runs)
    distinct = {r["hash"] for r in runs}
    assert set(todo) == distinct and len(todo) < len(runs)  # lam0 / g7 share the reference
    cached = next(iter(todo))
    (tmp_path / "checkpoints" / cached).mkdir(parents=True)
    (tmp_path / "checkpoints" / cached / "model.pt").write_bytes(b"")
    assert set(bench_paper.missing_checkpoints(runs)) == distinct - {cached}


def test_config_hash_ignores_new_default_fields() -> None:
    import dataclasses

    config = bench_paper.resolve_config("lesa", epochs=2)
    later = dataclasses.make_dataclass("LaterConfig", [("new_option", str, "off")],
                                       bases=(TrainConfig,))
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    assert bench_paper.config_hash(later(**data)) == bench_paper.config_hash(config)
    assert bench_paper.config_hash(later(**data, new_option="on")) != bench_paper.config_hash(
        config)
    assert bench_paper.config_hash(bench_paper.resolve_config("lesa", epochs=3)) != \
        bench_paper.config_hash(config)


def test_recipes_are_override_sets() -> None:
    from models.recipes import load_recipe

    default = load_recipe("default")
    for name in ("fast0tag", "lesa", "biam", "conse", "conse-all"):
        recipe = load_recipe(name)
        assert recipe["model"]["head"] == name.split("-")[0]
        assert recipe["datasets"] == default["datasets"]
        TrainConfig(**recipe)  # no stray keys
    assert load_recipe("lesa")["lr"] == default["lr"]
    assert load_recipe("ml2p-lam04")["lam"] == 0.4
    assert load_recipe("ml2p-residual")["model"]["head_kwargs"]["residual"] is True
    g1 = load_recipe("ml2p-g1")["model"]["head_kwargs"]
    assert g1["groups"] == 1 and g1["widths"] == default["model"]["head_kwargs"]["widths"]


def test_plan_covers_every_method_regime_and_dataset() -> None:
    """Each dataset trains its own methods; every method runs in every regime; seeds per
    dataset; the ablations stay on VOC at their own budget."""
    from models.recipes import REGIMES
    from models.train import regime_model

    runs = bench_paper.plan_runs("full", {"voc2007": [0, 1, 2], "emojitags": [0]})
    main = [r for r in runs if r["group"] == "main"]
    keys = [k for k, *_ in bench_paper.MAIN]
    for dataset, seeds in (("voc2007", [0, 1, 2]), ("emojitags", [0])):
        for regime in REGIMES:
            cell = [r for r in main if r["cell"] == f"{dataset}/{regime}"]
            assert sorted((r["key"], r["seed"]) for r in cell) == sorted(
                (k, s) for k in keys for s in seeds)
            for r in cell:
                assert r["config"].regime == regime and r["config"].datasets == [dataset]
    assert len({r["hash"] for r in main}) == len(main)  # no two runs share a checkpoint
    conse = {(r["regime"], r["key"]): r["config"] for r in main if r["dataset"] == "voc2007"
             and r["seed"] == 0 and r["key"] in bench_paper.CONSE_VARIANTS}
    model, _ = regime_model(conse["visual", "conse"], 16, np.zeros(1000, bool))
    assert model["head_kwargs"]["source"] == "seen"  # (a): a classifier of the seen labels
    model, _ = regime_model(conse["imagenet-strict", "conse"], 16,
                            np.zeros(1000, bool))
    assert model["head_kwargs"]["exclude_unseen"] is True
    assert conse["visual", "conse"].label_centring and \
        not conse["visual", "conse-raw"].label_centring
    ablations = [r for r in runs if r["group"] == "ablation"]
    assert {r["config"].epochs for r in ablations} == {bench_paper.ABLATION_EPOCHS}
    reference = next(r for r in ablations if r["key"] == "ml2p-ref")
    assert next(r for r in ablations if r["key"] == "ml2p-g7")["hash"] == reference["hash"]
    noevidence = next(r for r in ablations if r["key"] == "ml2p-noevidence")["config"]
    assert noevidence.regime == "visual" and reference["config"].regime == "imagenet-all"
    small = bench_paper.plan_runs("small", ablations=False, methods=("ml2p",),
                                  datasets=("voc2007",), regimes=("visual",))
    assert [(r["key"], r["seed"], r["config"].epochs) for r in small] == [
        ("ml2p", 0, bench_paper.SMALL_EPOCHS)]


def _metrics(m: float) -> dict:
    return {"zsl": {"map": m, "f1_3": m / 2, "f1_5": m / 3, "map_ci95": [m - 0.05, m + 0.05]},
            "gzsl": {"map": m / 2, "f1_3": m / 4, "f1_5": m / 5}}


def _latency(ms: float) -> dict:
    return {f"b{b}": {"batch": b, "median_ms_per_image": ms, "p10_ms_per_image": ms * 0.9,
                      "p90_ms_per_image": ms * 1.2} for b in (1, 32)}


def fake_report() -> dict:
    from models.recipes import REGIMES

    keys = [k for k, *_ in bench_paper.MAIN]
    methods = {"random": _metrics(0.1)} | {k: _metrics(0.2 + 0.1 * i) for i, k in enumerate(keys)}
    methods["ml2p"]["zsl"]["per_run_map"] = [0.6, 0.7, 0.8]
    diffs = {"ml2p - biam": {"zsl": [0.01, 0.2], "gzsl": [-0.1, 0.1]},
             "ml2p - conse-raw": {"zsl": [-0.05, 0.2], "gzsl": [0.1, 0.2]}}
    accuracy = {}
    for dataset, splits in bench_paper.TEST_SPLITS.items():
        for regime in REGIMES:
            accuracy[f"{dataset}/{regime}"] = {
                "inclusion_rule": "images with a positive", "bootstrap_samples": 10,
                "datasets": {s: {"test_images": 10, "labels": 6, "unseen_labels": 2,
                                 "dataset_version": 2 if dataset == "emojitags" else None,
                                 "methods": methods, "map_difference_ci95": diffs}
                             for s in splits}}
    head = {"params": 1000, "gflops": 0.01, "latency": _latency(1.0)}
    backbone = {"params": 3_000_000, "gflops": 0.8, "latency": _latency(10.0)}
    cost = {"backbones": {"lite0": backbone, "vgg": backbone},
            "project": {f"{regime}/{k}": {"backbone": "lite0", "head": head,
                                          "end_to_end": _latency(11.0)}
                        for regime in REGIMES for k in keys if k != "conse-raw"},
            "paper": {k: {"backbone": "vgg", "head": head,
                          "end_to_end": bench_paper.summed_latency(backbone["latency"],
                                                                    head["latency"])}
                      for k, _, _ in bench_paper.PAPER_HEADS}}
    runs = bench_paper.plan_runs("small", ablations=True, methods=("ml2p",))
    runs = [{k: v for k, v in r.items() if k != "config"} | {"config": r["config"].to_json()}
            for r in runs]
    ablation = {"datasets": {"voc2007": {"methods": {k: _metrics(0.3) for k, _, _ in
                                                     bench_paper.ABLATIONS}}}}
    report = {"command": "ml2p bench paper --budget small", "created": "now", "budget": "small",
              "seeds": {"voc2007": [0, 1, 2], "emojitags": [0]},
              "datasets": list(bench_paper.TRAIN_DATASETS), "regimes": list(REGIMES),
              "dataset_versions": {"voc2007": None, "emojitags": 2}, "threads": 1,
              "runs_per_point": 20, "runs": runs, "accuracy": accuracy,
              "ablation_accuracy": ablation, "ablation_same_as": {"ml2p-g7": "ml2p-ref"},
              "cost": cost, "shipped_max_abs_difference": 0.0, "train_seconds": 60.0,
              "phase_seconds": {"evaluation": 30.0}, "wall_seconds": 120.0,
              "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "load_average": [1.0]}}
    report["verdict"] = bench_paper.verdict(report)
    return report


def test_table_layout_and_figure(tmp_path: Path) -> None:
    report = fake_report()
    text = bench_paper.markdown(report)
    lines = text.splitlines()
    voc = lines.index(next(line for line in lines if line.startswith("## voc2007")))
    header = [c.strip() for c in lines[voc + 4].strip("|").split("|")]
    assert header == ["regime", "method", "ZSL mAP", "ZSL F1@3", "ZSL F1@5", "GZSL mAP",
                      "GZSL F1@3", "GZSL F1@5", "ZSL mAP per seed"]
    emoji = lines.index(next(line for line in lines if line.startswith("## emojitags v2")))
    assert [c.strip() for c in lines[emoji + 4].strip("|").split("|")][-2:] == [
        "test-shift ZSL mAP", "test-shift GZSL mAP"]  # the style-shift column
    rows = [line for line in lines[voc + 6:] if line.startswith("| (")]
    names = {tuple(c.strip() for c in row.strip("|").split("|")[:2]) for row in rows}
    assert ("(a) visual", "ConSE (seen-label classifier)") in names
    assert ("(b) strict", "ConSE (ImageNet, strict, raw vectors)") in names
    assert ("(b) all classes", "ML2P") in names and ("(a) visual", "random ranking") in names
    m = 100 * (0.2 + 0.1 * [k for k, *_ in bench_paper.MAIN].index("ml2p"))
    ml2p = next(row for row in rows if "| ML2P |" in row)
    assert f"{m:.1f} [{m - 5:.1f}, {m + 5:.1f}]" in ml2p and "60.0 / 70.0 / 80.0" in ml2p
    # the verdict names the strongest ConSE variant and says where the paired interval lies
    assert any("strongest ConSE variant ConSE (seen-label classifier, raw vectors)" in line
               and "includes 0" in line for line in report["verdict"])
    assert any("strongest other method BiAM" in line and "above 0" in line
               for line in report["verdict"])
    assert "## ML2P ablations" in text and "| ML2P G = 1 |" in text and "VGG19-BN" in text
    assert "| (b) strict | ML2P | 3.00 / 0.00 |" in text  # cost rows per regime
    assert "head weights is 0" in text
    png = bench_paper.figure(report, tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 300_000


def test_cli_wiring() -> None:
    from ml2p_cli import build_parser
    from models.cli import parse_methods

    args, rest = build_parser().parse_known_args(["bench", "paper", "--budget", "small",
                                                  "--no-ablations"])
    assert args.bench_module == "benchmarks.paper"  # the module parses its own flags
    own = argparse.ArgumentParser()
    bench_paper.add_arguments(own)
    args = own.parse_args(rest)
    assert args.budget == "small" and args.no_ablations
    args = build_parser().parse_args(["eval", "--method", "lesa=a.pt,b.pt", "--method",
                                      "biam=c.pt"])
    assert args.checkpoints == [] and parse_methods(args.method) == {
        "lesa": [Path("a.pt"), Path("b.pt")], "biam": [Path("c.pt")]}
    assert build_parser().parse_args(["eval", "x.pt"]).checkpoints == ["x.pt"]


def test_shipped_difference(tmp_path: Path) -> None:
    weights = {"w": torch.ones(3), "steps": torch.tensor(4)}
    torch.save({"head": weights}, tmp_path / "shipped.pt")
    torch.save({"head": {"w": torch.tensor([1.0, 1.5, 1.0]), "steps": torch.tensor(4)}},
               tmp_path / "ours.pt")
    assert bench_paper.shipped_difference(tmp_path / "ours.pt", tmp_path / "shipped.pt") == 0.5
    torch.save({"head": {"w": torch.ones(4), "steps": torch.tensor(4)}}, tmp_path / "other.pt")
    assert bench_paper.shipped_difference(tmp_path / "other.pt", tmp_path / "shipped.pt") is None
    assert bench_paper.shipped_difference(tmp_path / "ours.pt", tmp_path / "missing.pt") is None


def test_render_rewrites_the_table_from_the_json(tmp_path: Path) -> None:
    """`--render`: the committed JSON's table and figure written again, nothing re-measured."""
    report = fake_report()
    report["verdict"] = ["stale"]
    out = tmp_path / "paper.json"
    out.write_text(json.dumps(report))
    assert bench_paper.main(["--render", "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "stale" not in text and "strongest other method" in text
    assert json.loads(out.read_text())["command"] == report["command"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
