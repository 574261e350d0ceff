"""`ml2p bench paper` (benchmarks/paper.py): checkpoints cached by the hash of their training
configuration, recipes as override sets over the default, the table writer and the figure,
the CLI wiring (fast, no training)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    """--jobs trains each missing configuration once; cached and shipped ones are skipped."""
    monkeypatch.setenv("ML2P_CACHE_DIR", str(tmp_path))
    runs = bench_paper.plan_runs("small")
    todo = bench_paper.missing_checkpoints(runs)
    distinct = {r["hash"] for r in runs if not bench_paper.shipped_matches(r["hash"])}
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
    assert load_recipe("conse")["epochs"] == 0
    assert load_recipe("lesa")["lr"] == default["lr"]
    assert load_recipe("ml2p-lam04")["lam"] == 0.4
    assert load_recipe("ml2p-residual")["model"]["head_kwargs"]["residual"] is True
    g1 = load_recipe("ml2p-g1")["model"]["head_kwargs"]
    assert g1["groups"] == 1 and g1["widths"] == default["model"]["head_kwargs"]["widths"]
    runs = bench_paper.plan_runs("small")
    assert {r["key"] for r in runs} >= {"conse", "conse-all", "fast0tag", "lesa", "biam", "ml2p",
                                        "ml2p-g1"}
    assert all(r["config"].epochs in (0, bench_paper.SMALL_EPOCHS) for r in runs
               if r["group"] == "main")
    ablations = [r for r in runs if r["group"] == "ablation"]
    assert {r["config"].epochs for r in ablations} == {bench_paper.ABLATION_EPOCHS}
    reference = next(r for r in ablations if r["key"] == "ml2p-ref")
    assert next(r for r in ablations if r["key"] == "ml2p-g7")["hash"] == reference["hash"]
    noevidence = next(r for r in ablations if r["key"] == "ml2p-noevidence")["config"]
    assert noevidence.model["head_kwargs"]["imagenet_evidence_dim"] == 0
    full = bench_paper.plan_runs("full", ablations=False)
    assert sorted({r["seed"] for r in full}) == [0, 1, 2]


def _metrics(m: float) -> dict:
    return {"zsl": {"map": m, "f1_3": m / 2, "f1_5": m / 3, "map_ci95": [m - 0.05, m + 0.05]},
            "gzsl": {"map": m / 2, "f1_3": m / 4, "f1_5": m / 5}}


def _latency(ms: float) -> dict:
    return {f"b{b}": {"batch": b, "median_ms_per_image": ms, "p10_ms_per_image": ms * 0.9,
                      "p90_ms_per_image": ms * 1.2} for b in (1, 32)}


def fake_report() -> dict:
    keys = [k for k, _, _ in bench_paper.MAIN]
    methods = {"random": _metrics(0.1)} | {k: _metrics(0.2 + 0.1 * i) for i, k in enumerate(keys)}
    acc = {"inclusion_rule": "images with a positive", "bootstrap_samples": 10,
           "datasets": {d: {"test_images": 10, "labels": 6, "unseen_labels": 2,
                            "methods": methods,
                            "map_difference_ci95": {"ml2p - biam": {"zsl": [0.01, 0.2],
                                                                    "gzsl": [-0.1, 0.1]}}}
                        for d in bench_paper.DATASETS}}
    head = {"params": 1000, "gflops": 0.01, "latency": _latency(1.0)}
    backbone = {"params": 3_000_000, "gflops": 0.8, "latency": _latency(10.0)}
    cost = {"backbones": {"lite0": backbone, "vgg": backbone},
            "project": {k: {"backbone": "lite0", "head": head, "end_to_end": _latency(11.0)}
                        for k in keys},
            "paper": {k: {"backbone": "vgg", "head": head,
                          "end_to_end": bench_paper.summed_latency(backbone["latency"],
                                                                    head["latency"])}
                      for k, _, _ in bench_paper.PAPER_HEADS}}
    runs = [{"key": k, "name": n, "group": "main", "seed": 0} for k, n, _ in bench_paper.MAIN]
    runs += [{"key": k, "name": n, "group": "ablation", "seed": 0}
             for k, n, _ in bench_paper.ABLATIONS]
    ablation = {"datasets": {d: {"methods": {k: _metrics(0.3) for k, _, _ in
                                             bench_paper.ABLATIONS}}
                             for d in bench_paper.DATASETS}}
    report = {"command": "ml2p bench paper --budget small", "created": "now", "budget": "small",
              "budget_note": "3 epochs.", "ml2p_note": "note.", "seeds": [0], "threads": 1,
              "runs_per_point": 20, "runs": runs, "accuracy": acc,
              "ablation_accuracy": ablation, "ablation_same_as": {"ml2p-g7": "ml2p"},
              "cost": cost, "train_seconds": 60.0, "wall_seconds": 120.0,
              "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "load_average": [1.0]}}
    report["verdict"] = bench_paper.verdict(acc, {r["key"]: r["name"] for r in runs})
    return report


def test_table_layout_and_figure(tmp_path: Path) -> None:
    report = fake_report()
    text = bench_paper.markdown(report)
    header = next(line for line in text.splitlines() if line.startswith("| method | VOC"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[1:13] == [f"{d} {s} {m}" for d in ("VOC", "Emoji") for s in ("ZSL", "GZSL")
                           for m in ("mAP", "F1@3", "F1@5")]
    assert cells[13:] == ["params M (bb / head)", "GFLOPs (bb / head)", "ms/img b1",
                          "ms/img b32"]
    rows: dict[str, str] = {}  # first occurrence: the main table before the paper config
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            rows.setdefault(line.split("|")[1].strip(), line)
    for name in ("random ranking", "ConSE", "Fast0Tag", "LESA", "BiAM", "ML2P", "ML2P G = 1"):
        assert name in rows
    assert len(rows["ML2P"].strip().strip("|").split("|")) == 17
    m = 100 * (0.2 + 0.1 * [k for k, _, _ in bench_paper.MAIN].index("ml2p"))
    assert f"{m:.1f} [{m - 5:.1f}, {m + 5:.1f}]" in rows["ML2P"]  # ZSL mAP with its interval
    assert "3.00 / 0.00" in rows["ML2P"] and "11.0 (9.9–13.2)" in rows["ML2P"]
    assert "ML2P tops the ZSL mAP column" in text and "VGG19-BN" in text
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


def test_shipped_model_recognised_by_config_hash(tmp_path: Path) -> None:
    config = bench_paper.resolve_config("default", epochs=2)
    path = tmp_path / "default.pt"
    torch.save({"provenance": {"train_config": config.to_json()}}, path)
    assert bench_paper.shipped_matches(bench_paper.config_hash(config), path)
    other = bench_paper.resolve_config("default", epochs=3)
    assert not bench_paper.shipped_matches(bench_paper.config_hash(other), path)
    assert not bench_paper.shipped_matches("0" * 16, tmp_path / "missing.pt")
