"""`ml2p bench paper`: the paper's comparison reproduced on this project's data and machine.

ConSE, Fast0Tag, LESA and BiAM beside ML2P (method.md §1–3), every one trained by the same
`Trainer` from its recipe (`models/recipes/<name>.json`, an override set over `default`) on the
same cached EfficientNet-Lite0 features, labels and data, with fixed seeds, and evaluated by
the same protocol (`models.evaluate.evaluate_methods`: VOC 2007 and EmojiTags test, ZSL / GZSL ×
mAP / F1@3 / F1@5). Plus the ML2P ablations (λ, residual, G) and the cost of every method:

- parameters and GFLOPs per image for the backbone and the head separately. GFLOPs are counted
  from ONNX graphs by `models.flops.count_flops` (each part exported on its own at batch 1;
  1 multiply-add = 2 FLOPs; Conv / MatMul / Gemm only, elementwise work given apart). The head
  part includes scoring 20 labels (label vectors are computed once per vocabulary and are not
  counted). Parameters: torch parameters of the head; for the backbone, those the used outputs
  depend on (a backward pass finds them: Lite0 without its classifier unless the head reads
  the ImageNet logits, as ConSE does).
- latency per image at batch 1 and batch 32 on this CPU, fp32, in onnxruntime on each part's
  exported graph (the serving engine; `--engine torch` for PyTorch eager, whose depthwise
  convolutions are slow at batch 32), `--threads` threads (default 1: the machine is shared),
  median of `--runs` (≥ 20) timed runs after 3 warm-up runs, with p10 / p90 / min / max; all
  methods in one process, one run, timed round-robin (run r of every point, then run r + 1) so
  load from other jobs falls on all methods alike. Backbone alone, head alone (on the
  backbone's taps of the same images) and, for this project's configuration, backbone + head
  end to end.
- the paper configuration (VGG19-BN at 224, random weights — cost does not depend on them) for
  ML2P (faithful: G = 7, D = 300, widths 512/512/1024), LESA and BiAM (D = 300): cost only; its
  end-to-end latency is the backbone's plus the head's (one VGG19 timing shared by the three).

Checkpoints are cached by a hash of their full training configuration under
`$ML2P_CACHE_DIR/checkpoints/<hash>/model.pt` (default `~/.cache/ml2p`); an interrupted run
resumes from its `train_state.pt`. Budgets: `small` trains the main methods for SMALL_EPOCHS
epochs and one seed; `full` trains them for their recipe's epochs with seeds 0, 1, 2. The
ablations always train for ABLATION_EPOCHS epochs, seed 0 (the faithful-width head costs ~8 s per
step on this 2-core CPU), beside a reference row: the default recipe at the same budget.

Writes `benchmarks/results/paper_comparison.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import command_main

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SMALL_EPOCHS = 3
ABLATION_EPOCHS = 1
# each dataset trains its own methods (on its seen labels) and tests them on its own test
# splits; EmojiTags' second split is the held-out art style ("style shift")
TRAIN_DATASETS = ("voc2007", "emojitags")
TEST_SPLITS = {"voc2007": ("voc2007",), "emojitags": ("emojitags", "emojitags:test-shift")}
SCORED_LABELS = 20  # labels scored inside the head's cost (VOC's vocabulary size)
BATCHES = (1, 32)
# key, display name, recipe, settings changed from it; every method runs in every regime
# (`models.recipes.REGIMES`): ConSE's classifier is the seen-label one in (a), the backbone's
# ImageNet one in (b); its two variants differ in the label vectors (centred or raw)
MAIN = (
    ("conse", "ConSE", "conse", {}),
    ("conse-raw", "ConSE (raw vectors)", "conse", {"label_centring": False}),
    ("fast0tag", "Fast0Tag", "fast0tag", {}),
    ("lesa", "LESA", "lesa", {}),
    ("biam", "BiAM", "biam", {}),
    ("ml2p", "ML2P", "default", {}),
)
CONSE_VARIANTS = ("conse", "conse-raw")
ABLATIONS = (
    ("ml2p-ref", "ML2P default recipe (reference at this budget)", "default"),
    ("ml2p-lam0", "ML2P λ = 0", "ml2p-lam0"),
    ("ml2p-lam04", "ML2P λ = 0.4", "ml2p-lam04"),
    ("ml2p-noresidual", "ML2P no residual (code)", "ml2p-noresidual"),
    ("ml2p-residual", "ML2P residual (poster)", "ml2p-residual"),
    ("ml2p-g1", "ML2P G = 1", "ml2p-g1"),
    ("ml2p-g3", "ML2P G = 3", "ml2p-g3"),
    ("ml2p-g7", "ML2P G = 7", "ml2p-g7"),
    ("ml2p-lr3e-4", "ML2P lr 3e-4", "ml2p-lr3e-4"),
    ("ml2p-lr3e-3", "ML2P lr 3e-3", "ml2p-lr3e-3"),
    ("ml2p-noproj", "ML2P no label projection (D = 384)", "ml2p-noproj"),
    ("ml2p-noevidence", "ML2P no ImageNet evidence", "ml2p-noevidence"),
)
TIMING_ENGINES = {"onnxruntime": "onnxruntime (the exported ONNX graph of each part)",
                  "torch": "PyTorch eager"}
# the paper configuration (cost only): VGG19-BN taps at 224, D = 300 word vectors
PAPER_BACKBONE = "vgg19_bn"
PAPER_DIM = 300
PAPER_HEADS = (
    ("lesa", "LESA", {}),
    ("biam", "BiAM", {}),
    ("ml2p", "ML2P", {"groups": 7, "residual": False}),
)


# ------------------------------------------------------------------ configurations and cache


def resolve_config(recipe: str, epochs: int | None = None, seed: int = 0,
                   changes: dict | None = None):  # noqa: ANN201
    """The TrainConfig of `recipe` with `changes`, at `epochs` (None: the recipe's) and `seed`.

    A training-free recipe (epochs 0) stays at 0 whatever the budget.
    """
    from models.recipes import apply_override_dict, load_recipe
    from models.train import TrainConfig

    data = apply_override_dict(load_recipe(recipe), changes or {})
    if epochs is not None and data.get("epochs", 1) > 0:
        data["epochs"] = epochs
    data["seed"] = seed
    return TrainConfig(**data)


# TrainConfig's fields when the cache scheme was fixed: always hashed, whatever their value
HASHED_FIELDS = ("model", "datasets", "eval_datasets", "epochs", "batch_size", "lr",
                 "weight_decay", "warmup_steps", "lam", "negatives", "distill_weight",
                 "distill_teacher_temperature", "distill_student_scale", "max_train_images",
                 "seed")


def canonical_config(config) -> dict:  # noqa: ANN001 - TrainConfig
    """The configuration as hashed: every field in HASHED_FIELDS, plus any later field whose
    value differs from its TrainConfig default.

    So a field added to TrainConfig later, with a default that keeps the old behaviour, does
    not invalidate the cached checkpoints, while every setting that existed is hashed by value
    (a changed default in the dataclass can never alias two different trainings).
    """
    data = json.loads(json.dumps(config.to_json()))
    defaults = json.loads(json.dumps(type(config)().to_json()))
    return {k: v for k, v in data.items() if k in HASHED_FIELDS or v != defaults.get(k)}


def config_hash(config) -> str:  # noqa: ANN001 - TrainConfig
    """16 hex digits of SHA-256 over the canonical JSON of `canonical_config(config)`."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_root() -> Path:
    from models.data.base import cache_root

    return cache_root() / "checkpoints"


def ensure_checkpoint(config, train_fn: Callable | None = None) -> tuple[Path, bool]:  # noqa: ANN001
    """`(model.pt, cached)`: the checkpoint of `config`, trained now unless already cached."""
    directory = checkpoint_root() / config_hash(config)
    path = directory / "model.pt"
    if path.exists():
        return path, True
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_json(), indent=1,
                                                      sort_keys=True))
    if train_fn is None:
        from models.training_free import train_any as train_fn
    train_fn(config, directory)  # resumes from train_state.pt after an interruption
    if not path.exists():
        raise RuntimeError(f"training {config_hash(config)} wrote no {path}")
    return path, False


SHIPPED = REPO / "models" / "weights" / "default.pt"


def _train_in_subprocess(config_json: dict, threads: int) -> str:
    """One checkpoint, in a worker process of `train_missing` (torch limited to `threads`)."""
    import torch

    from models.train import TrainConfig

    torch.set_num_threads(threads)
    path, _ = ensure_checkpoint(TrainConfig(**config_json))
    return str(path)


def missing_checkpoints(runs: list[dict]) -> dict[str, dict]:
    """{hash: config JSON} of the runs still to train (not cached), each configuration once."""
    todo: dict[str, dict] = {}
    for item in runs:
        if item["hash"] in todo:
            continue
        if not (checkpoint_root() / item["hash"] / "model.pt").exists():
            todo[item["hash"]] = item["config"].to_json()
    return todo


def train_missing(runs: list[dict], jobs: int, threads: int) -> float:
    """Train the runs' checkpoints that are not cached, `jobs` at a time in separate processes
    (slowest first); returns the wall seconds spent."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    todo = missing_checkpoints(runs)
    if not todo:
        return 0.0
    started = time.perf_counter()
    log.info("training %d checkpoints, %d at a time", len(todo), jobs)
    order = sorted(todo, key=lambda h: -_train_weight(todo[h]))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for path in pool.map(_train_in_subprocess, [todo[h] for h in order],
                             [threads] * len(order)):
            log.info("trained %s", path)
    return time.perf_counter() - started


def _train_weight(config: dict) -> float:
    """Rough relative training cost, to start the slowest runs first."""
    head = config["model"]["head_kwargs"]
    return config["epochs"] * config["model"]["dim"] * head.get("groups", 1)


def shipped_difference(checkpoint: Path, path: Path | None = None) -> float | None:
    """Largest absolute difference between the head weights of `checkpoint` and the shipped
    default model's (None when their shapes differ or the shipped file is missing): 0 means
    the bench's run is the shipped model."""
    import torch

    path = path or SHIPPED
    if not path.exists():
        return None
    ours = torch.load(checkpoint, map_location="cpu", weights_only=True)["head"]
    shipped = torch.load(path, map_location="cpu", weights_only=True)["head"]
    if ours.keys() != shipped.keys() or any(ours[k].shape != shipped[k].shape for k in ours):
        return None
    return max(float((ours[k].float() - shipped[k].float()).abs().max()) for k in ours
               if ours[k].is_floating_point())


def plan_runs(budget: str, seeds: dict[str, list[int]] | None = None, ablations: bool = True,
              methods: tuple[str, ...] | None = None,
              datasets: tuple[str, ...] = TRAIN_DATASETS,
              regimes: tuple[str, ...] | None = None) -> list[dict]:
    """Every training run of the bench, with its config and hash: each main method × regime ×
    training dataset × seed (`seeds`: per dataset; default 0 small, 0 1 2 full), then the
    ablations (VOC, seed 0)."""
    from models.recipes import REGIMES

    default_seeds = [0] if budget == "small" else [0, 1, 2]
    main_epochs = SMALL_EPOCHS if budget == "small" else None
    runs = []
    for dataset in datasets:
        for regime in regimes or REGIMES:
            for key, name, recipe, changes in MAIN:
                if methods is not None and key not in methods:
                    continue
                for seed in (seeds or {}).get(dataset, default_seeds):
                    config = resolve_config(recipe, main_epochs, seed,
                                            {**changes, "regime": regime, "datasets": [dataset]})
                    runs.append({"key": key, "name": name, "recipe": recipe, "seed": seed,
                                 "dataset": dataset, "regime": regime,
                                 "cell": f"{dataset}/{regime}", "group": "main",
                                 "config": config, "hash": config_hash(config)})
    if ablations:
        for key, name, recipe in ABLATIONS:
            config = resolve_config(recipe, ABLATION_EPOCHS, 0)
            runs.append({"key": key, "name": name, "recipe": recipe, "seed": 0,
                         "dataset": "voc2007", "group": "ablation", "config": config,
                         "hash": config_hash(config)})
    return runs


# ------------------------------------------------------------------ cost


def latency_stats(times: list[float], batch: int) -> dict:
    """Per-image median and spread (p10 / p90 / min / max) of batch timings in seconds."""
    p10, p90 = np.percentile(times, [10, 90])
    per = 1e3 / batch
    return {"batch": batch, "runs": len(times),
            "median_ms_per_image": statistics.median(times) * per,
            "p10_ms_per_image": p10 * per, "p90_ms_per_image": p90 * per,
            "min_ms_per_image": min(times) * per, "max_ms_per_image": max(times) * per,
            "median_ms_per_batch": statistics.median(times) * 1e3}


def time_interleaved(points: dict[str, tuple[Callable, tuple]], runs: int,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of every `fn(*args)`, `runs` rounds after `warmup` rounds.

    Round-robin: round r times every point once, so load from other jobs on a shared machine
    falls on all methods alike instead of on whichever was measured at the time.
    """
    for _ in range(warmup):
        for fn, args in points.values():
            fn(*args)
    times: dict[str, list[float]] = {key: [] for key in points}
    for r in range(runs):
        for key, (fn, args) in points.items():
            started = time.perf_counter()
            fn(*args)
            times[key].append(time.perf_counter() - started)
        log.info("latency round %d/%d done", r + 1, runs)
    return times


def _modules():  # noqa: ANN202 - the nn.Module wrappers, built lazily (torch import)
    import torch
    from torch import nn

    class BackbonePart(nn.Module):
        """image → taps (+ ImageNet logits when the head reads them)."""

        def __init__(self, backbone: nn.Module, logits: bool) -> None:
            super().__init__()
            self.backbone, self.logits = backbone, logits

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if self.logits:
                return tuple(self.backbone.forward_all(image))
            return tuple(self.backbone(image))

    class HeadPart(nn.Module):
        """taps (+ logits) → scores [B, L] against fixed label vectors."""

        def __init__(self, head: nn.Module, labels: torch.Tensor) -> None:
            super().__init__()
            self.head = head
            self.register_buffer("labels", labels)

        def forward(self, t8: torch.Tensor, t16: torch.Tensor, t32: torch.Tensor,
                    logits: torch.Tensor | None = None) -> torch.Tensor:
            return self.head.score(self.head((t8, t16, t32), logits), self.labels)

    class EndToEnd(nn.Module):
        def __init__(self, backbone: BackbonePart, head: HeadPart) -> None:
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(*self.backbone(image))

    return BackbonePart, HeadPart, EndToEnd


def export_part(module, inputs: tuple, names: list[str], path: Path) -> tuple[Path, dict]:  # noqa: ANN001
    """Export `module` to ONNX (dynamic batch axis) and count its GFLOPs at batch 1."""
    import torch

    from models.flops import count_flops

    with torch.no_grad():
        outs = module(*inputs)
    n_out = len(outs) if isinstance(outs, tuple) else 1
    outputs = [f"out{i}" for i in range(n_out)]
    with torch.no_grad():
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=outputs,
                          dynamic_axes={n: {0: "N"} for n in names + outputs},
                          do_constant_folding=True)
    report = count_flops(path, {n: (1, *t.shape[1:]) for n, t in zip(names, inputs, strict=True)})
    return path, {"gflops": report.flops / 1e9,
                  "elementwise_gflops": report.elementwise_flops / 1e9}


def ort_runner(path: Path, threads: int) -> Callable:
    """fn(*arrays) running the ONNX graph in onnxruntime (CPU, `threads`, no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    declared = [i.name for i in sess.get_inputs()]
    exported = ["image"] if declared == ["image"] else ["t8", "t16", "t32", "logits"]

    def run(*arrays):  # noqa: ANN002, ANN202
        feeds = {n: a for n, a in zip(exported, arrays, strict=False) if n in declared}
        return sess.run(None, feeds)

    return run


def backbone_params(module) -> int:  # noqa: ANN001 - BackbonePart
    """Parameters the part's outputs depend on (found by one backward pass at batch 1)."""
    import torch

    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    module.eval()
    outs = module(torch.zeros(1, 3, 224, 224))
    sum(o.float().mean() for o in outs).backward()
    n = sum(p.numel() for p in params if p.grad is not None)
    for p, flag in zip(params, flags, strict=True):
        p.grad = None
        p.requires_grad_(flag)
    return int(n)


def measure_cost(project: dict, runs: int, paper: bool = True, engine: str = "onnxruntime",
                 threads: int = 1) -> dict:
    """Cost of each method: params / GFLOPs (backbone, head) and latency at batch 1 and 32.

    `project`: {key: checkpoint path} of this project's trained models (the architecture is
    read from the checkpoint). The paper configuration is built here with random weights.
    Every latency point (backbones alone, heads alone, project end to end) is timed in one
    interleaved loop (`time_interleaved`), in onnxruntime on the exported graphs (the serving
    engine; default) or in PyTorch eager (`engine="torch"`).
    """
    import torch

    from models.backbones import create_backbone
    from models.export import sample_images
    from models.heads import create_head
    from models.tagger import load_checkpoint

    BackbonePart, HeadPart, EndToEnd = _modules()
    images = torch.from_numpy(sample_images(max(BATCHES), "val"))
    gen = torch.Generator().manual_seed(0)
    result: dict = {"project": {}, "paper": {}, "backbones": {}}
    points: dict[str, tuple[Callable, tuple]] = {}  # "<where>|b<batch>" → (fn, args)
    parts: dict[str, torch.nn.Module] = {}
    taps_of: dict[str, tuple] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-paper-"))

    def add_points(where: str, module: torch.nn.Module, graph: Path, args_for: Callable) -> None:
        if engine == "onnxruntime":
            fn = ort_runner(graph, threads)
            for b in BATCHES:
                points[f"{where}|b{b}"] = (fn, tuple(a.numpy() for a in args_for(b)))
        else:
            for b in BATCHES:
                points[f"{where}|b{b}"] = (module, args_for(b))

    def graph_path(where: str) -> Path:
        return tmp / (where.replace("/", "_").replace(" ", "_") + ".onnx")

    def backbone_part(label: str, backbone: torch.nn.Module, logits: bool) -> str:
        key = f"{label}{'+classifier' if logits else ''}"
        if key not in result["backbones"]:
            log.info("cost: backbone %s", key)
            part = BackbonePart(backbone, logits).eval()
            graph, flops = export_part(part, (images[:1],), ["image"],
                                       graph_path(f"backbone/{key}"))
            result["backbones"][key] = {"params": backbone_params(part), **flops}
            with torch.inference_mode():
                taps_of[key] = part(images)
            parts[key] = part
            add_points(f"backbone/{key}", part, graph, lambda b: (images[:b],))
        return key

    def head_part(where: str, head: torch.nn.Module, labels: torch.Tensor,
                  taps: tuple) -> tuple[torch.nn.Module, dict]:
        log.info("cost: %s head", where)
        part = HeadPart(head.eval(), labels).eval()
        names = ["t8", "t16", "t32", "logits"][: len(taps)]
        graph, flops = export_part(part, tuple(t[:1] for t in taps), names,
                                   graph_path(f"head/{where}"))
        entry = {"params": int(sum(p.numel() for p in head.parameters())), **flops}
        add_points(f"head/{where}", part, graph, lambda b: tuple(t[:b] for t in taps))
        return part, entry

    for key, path in project.items():
        tagger = load_checkpoint(path)
        name = tagger.config["backbone"]
        bkey = backbone_part(name, create_backbone(name).eval(), tagger.uses_imagenet_logits)
        labels = torch.nn.functional.normalize(
            torch.randn(SCORED_LABELS, tagger.config["dim"], generator=gen), dim=-1)
        hpart, head_entry = head_part(f"project/{key}", tagger.head, labels, taps_of[bkey])
        whole = EndToEnd(parts[bkey], hpart).eval()
        graph, _ = export_part(whole, (images[:1],), ["image"], graph_path(f"e2e/{key}"))
        add_points(f"e2e/project/{key}", whole, graph, lambda b: (images[:b],))
        result["project"][key] = {"backbone": bkey, "head": head_entry,
                                  "end_to_end_measured": True}
    if paper:
        vgg = create_backbone(PAPER_BACKBONE, random_init=True).eval()
        bkey = backbone_part(f"{PAPER_BACKBONE} (random weights)", vgg, False)
        labels = torch.nn.functional.normalize(
            torch.randn(SCORED_LABELS, PAPER_DIM, generator=gen), dim=-1)
        for key, _, kwargs in PAPER_HEADS:
            torch.manual_seed(0)
            head = create_head(key, backbone=PAPER_BACKBONE, dim=PAPER_DIM, **kwargs)
            _, head_entry = head_part(f"paper/{key}", head, labels, taps_of[bkey])
            result["paper"][key] = {"backbone": bkey, "head": head_entry,
                                    "end_to_end_measured": False, "head_kwargs": kwargs}
    log.info("timing %d latency points × %d runs (interleaved, %s)", len(points), runs, engine)
    with torch.inference_mode():
        times = time_interleaved(points, runs)
    points.clear()
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()
    latency: dict[str, dict] = {}
    for point, values in times.items():
        where, batch = point.rsplit("|", 1)
        latency.setdefault(where, {})[batch] = latency_stats(values, int(batch[1:]))
    for key, entry in result["backbones"].items():
        entry["latency"] = latency[f"backbone/{key}"]
    for group in ("project", "paper"):
        for key, entry in result[group].items():
            entry["head"]["latency"] = latency[f"head/{group}/{key}"]
            entry["end_to_end"] = (latency[f"e2e/{group}/{key}"] if group == "project" else
                                   summed_latency(result["backbones"][entry["backbone"]]
                                                  ["latency"], entry["head"]["latency"]))
    return result


def summed_latency(backbone: dict, head: dict) -> dict:
    """Backbone + head medians (the paper configuration's end-to-end figure, not measured)."""
    return {b: {"median_ms_per_image": backbone[b]["median_ms_per_image"]
                + head[b]["median_ms_per_image"], "batch": backbone[b]["batch"],
                "summed": True} for b in backbone}


# ------------------------------------------------------------------ report


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _map_cell(values: dict) -> str:
    cell = _pct(values["map"])
    if "map_ci95" in values:
        lo, hi = values["map_ci95"]
        cell += f" [{_pct(lo)}, {_pct(hi)}]"
    return cell


def _ms(entry: dict, batch: str) -> str:
    lat = entry[batch]
    if "p10_ms_per_image" in lat:
        return (f"{lat['median_ms_per_image']:.1f} "
                f"({lat['p10_ms_per_image']:.1f}–{lat['p90_ms_per_image']:.1f})")
    return f"{lat['median_ms_per_image']:.1f} (sum)"


def cost_columns(cost: dict, backbones: dict) -> list[str]:
    """params (M) backbone / head, GFLOPs backbone / head, ms/image b1 and b32."""
    b = backbones[cost["backbone"]]
    h = cost["head"]
    return [f"{b['params'] / 1e6:.2f} / {h['params'] / 1e6:.2f}",
            f"{b['gflops']:.2f} / {h['gflops']:.3f}",
            _ms(cost["end_to_end"], "b1"), _ms(cost["end_to_end"], "b32")]


CONSE_NAMES = {"visual": "seen-label classifier", "imagenet-strict": "ImageNet, strict",
               "imagenet-all": "ImageNet, all classes"}


def display_name(key: str, regime: str | None = None) -> str:
    """A main method's name in a regime (ConSE's classifier differs by regime)."""
    if key == "random":
        return "random ranking"
    names = {k: n for k, n, *_ in MAIN} | {k: n for k, n, _ in ABLATIONS}
    if key in CONSE_VARIANTS and regime:
        raw = ", raw vectors" if key == "conse-raw" else ""
        return f"ConSE ({CONSE_NAMES[regime]}{raw})"
    return names.get(key, key)


def _cells(report: dict, dataset: str) -> list[tuple[str, str, dict]]:
    """(cell, regime, evaluation) of one training dataset, in regime order."""
    return [(f"{dataset}/{regime}", regime, report["accuracy"][f"{dataset}/{regime}"])
            for regime in report["regimes"] if f"{dataset}/{regime}" in report["accuracy"]]


def best_of(methods: dict, keys: tuple[str, ...] | list[str]) -> str | None:
    """The key among `keys` with the highest ZSL mAP (the seed mean)."""
    present = [k for k in keys if k in methods]
    return max(present, key=lambda k: methods[k]["zsl"]["map"]) if present else None


def _paired(entry: dict, other: str) -> dict | None:
    return entry.get("map_difference_ci95", {}).get(f"ml2p - {other}")


def _interval(d: list[float]) -> str:
    return f"[{100 * d[0]:+.1f}, {100 * d[1]:+.1f}]"


def _per_seed(values: dict) -> str:
    runs = values.get("per_run_map")
    return " / ".join(_pct(v) for v in runs) if runs else "–"


def accuracy_table(report: dict, dataset: str) -> list[str]:
    """One row per regime and method: the first test split in full, any other by its mAPs."""
    splits = TEST_SPLITS[dataset]
    header = ["regime", "method", "ZSL mAP", "ZSL F1@3", "ZSL F1@5", "GZSL mAP", "GZSL F1@3",
              "GZSL F1@5", "ZSL mAP per seed"]
    header += [f"{s.split(':')[1]} {m}" for s in splits[1:] for m in ("ZSL mAP", "GZSL mAP")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, regime, acc in _cells(report, dataset):
        main = acc["datasets"][splits[0]]["methods"]
        for key in ["random"] + [k for k, *_ in MAIN if k in main]:
            v = main[key]
            cells = [REGIME_SHORT[regime], display_name(key, regime)]
            cells += [_map_cell(v["zsl"]), _pct(v["zsl"]["f1_3"]), _pct(v["zsl"]["f1_5"]),
                      _map_cell(v["gzsl"]), _pct(v["gzsl"]["f1_3"]), _pct(v["gzsl"]["f1_5"]),
                      # the random ranking's runs are draws, not training seeds
                      "–" if key == "random" else _per_seed(v["zsl"])]
            for split in splits[1:]:
                other = acc["datasets"][split]["methods"][key]
                cells += [_map_cell(other["zsl"]), _map_cell(other["gzsl"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


REGIME_SHORT = {"visual": "(a) visual", "imagenet-strict": "(b) strict",
                "imagenet-all": "(b) all classes"}


def markdown(report: dict) -> str:
    from models.recipes import REGIME_NAMES

    cost = report.get("cost") or {}
    backbones = cost.get("backbones", {})
    first = next(iter(report["accuracy"].values()))
    phases = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min"
                       for k, v in report.get("phase_seconds", {}).items())
    lines = [
        "# The paper's comparison: ConSE, Fast0Tag, LESA, BiAM and ML2P, in two regimes",
        "",
        f"Command: `{report['command']}` ({report['created']}; wall time "
        f"{report['wall_seconds'] / 60:.1f} min: {phases}). Training every checkpoint: "
        f"{report['train_seconds'] / 60:.1f} min of epochs as the checkpoints' histories "
        "record them (`ml2p bench paper --train-only` with the same flags trains what is "
        f"missing). Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores "
        f"(shared with other jobs; load average {report['machine']['load_average']} at the "
        f"end), torch {report['machine']['torch']}, {report['threads']} thread(s).",
        "",
        setup_note(report),
        "",
        f"Accuracy (%): {first['inclusion_rule']}. mAP is the mean over seeds, with its 95 % "
        f"bootstrap interval ({first['bootstrap_samples']} resamples of test images, the same "
        "resamples for every method of a table, so differences are paired).",
        "",
    ]
    for dataset in report["datasets"]:
        cells = _cells(report, dataset)
        if not cells:
            continue
        entry = cells[0][2]["datasets"][TEST_SPLITS[dataset][0]]
        version = entry.get("dataset_version")
        lines += [f"## {dataset}" + (f" v{version}" if version else "")
                  + f": trained on its seen labels, seeds {report['seeds'][dataset]}", "",
                  "Test: " + "; ".join(
                      f"{split}: {e['test_images']} images, {e['labels']} labels "
                      f"({e['unseen_labels']} unseen)"
                      for split, e in cells[0][2]["datasets"].items()) + ".", ""]
        lines += accuracy_table(report, dataset)
        lines.append("")
        for _, regime, acc in cells:
            diffs = acc["datasets"][TEST_SPLITS[dataset][0]].get("map_difference_ci95", {})
            if diffs:
                lines.append(f"ML2P − other, {REGIME_NAMES[regime]}, paired 95 % interval of "
                             "the mAP difference: " + "; ".join(
                                 f"{display_name(p.split(' - ')[1], regime)} ZSL "
                                 f"{_interval(d['zsl'])} GZSL {_interval(d['gzsl'])}"
                                 for p, d in diffs.items()) + ".")
                lines.append("")
    outside = sorted({split for dataset in report["datasets"]
                      for _, _, acc in _cells(report, dataset)
                      for split, entry in acc["datasets"].items()
                      for v in entry["methods"].values() for st in ("zsl", "gzsl")
                      if "map_ci95" in v[st]
                      and not v[st]["map_ci95"][0] <= v[st]["map"] <= v[st]["map_ci95"][1]})
    if outside:
        lines += [f"Note: on {', '.join(outside)} some mAP estimates lie outside their "
                  "bootstrap interval: labels with few positive test images have low AP, and "
                  "a resample that repeats or leaves out some of their few positives skews their "
                  "AP upward (labels left without a positive are skipped), so the resampled mAP "
                  "sits above the estimate; compare methods there by the paired differences, "
                  "which share that bias.", ""]
    lines += ["## Verdict", ""] + report.get("verdict", [])
    if report.get("shipped_max_abs_difference") is not None:
        lines += ["", "The VOC regime (b) all-classes ML2P run of seed 0 is the shipped recipe "
                  "retrained here, not the shipped file `models/weights/default.pt` (trained "
                  "earlier by `ml2p train --recipe default --seeds 0 1 2`): the largest "
                  "absolute difference between their head weights is "
                  f"{report['shipped_max_abs_difference']:.2g}."]
    abl = report.get("ablation_accuracy")
    if abl:
        same = report.get("ablation_same_as", {})
        lines += ["", f"## ML2P ablations (voc2007, {ABLATION_EPOCHS} epoch(s), seed 0)", "",
                  "Each row is the default recipe (regime (b), all classes) with one setting "
                  "changed; rows with the same configuration share one checkpoint ("
                  + (", ".join(f"{display_name(k)} = {display_name(v)}"
                               for k, v in same.items()) or "none") + ").", "",
                  "| method | ZSL mAP | ZSL F1@3 | ZSL F1@5 | GZSL mAP | GZSL F1@3 | GZSL F1@5 |",
                  "|---|---|---|---|---|---|---|"]
        methods = abl["datasets"]["voc2007"]["methods"]
        for key, name, _ in ABLATIONS:
            if key in methods:
                v = methods[key]
                lines.append(f"| {name} | " + " | ".join(
                    _pct(v[st][m]) for st in ("zsl", "gzsl") for m in ("map", "f1_3", "f1_5"))
                    + " |")
    if cost.get("project"):
        lines += ["", "## Cost (voc2007 models; the head, not the data, sets it)", "",
                  "Params in millions and GFLOPs per image as backbone / head (GFLOPs counted "
                  "from each part's ONNX graph by `models.flops.count_flops`, 1 multiply-add = "
                  f"2 FLOPs, Conv/MatMul/Gemm; the head includes scoring {SCORED_LABELS} "
                  "labels; with ImageNet evidence the backbone includes its classifier); "
                  "latency in ms per image, end to end (backbone + head), "
                  f"{TIMING_ENGINES[report.get('engine', 'torch')]} fp32 on this CPU, "
                  f"{report['threads']} thread(s), median of {report['runs_per_point']} runs "
                  "after 3 warm-up runs (p10–p90), every point timed round-robin in one loop "
                  "so that load from other jobs falls on all methods alike.", "",
                  "| regime | method | params M (bb / head) | GFLOPs (bb / head) | ms/img b1 "
                  "| ms/img b32 |", "|---|---|---|---|---|---|"]
        for key, entry in cost["project"].items():
            regime, method = key.split("/")
            lines.append(f"| {REGIME_SHORT[regime]} | {display_name(method, regime)} | "
                         + " | ".join(cost_columns(entry, backbones)) + " |")
    if cost.get("paper"):
        lines += ["", "## Paper configuration, cost only (VGG19-BN at 224, random weights, "
                  f"D = {PAPER_DIM})", "",
                  "End-to-end latency = the VGG19-BN backbone's median + the head's median "
                  "(one backbone timing shared by the three heads). ML2P is the faithful "
                  "configuration (G = 7, widths 512/512/1024, no residual).", "",
                  "| method | params M (bb / head) | GFLOPs (bb / head) | head ms/img b1 "
                  "| head ms/img b32 | ms/img b1 | ms/img b32 |", "|---|---|---|---|---|---|---|"]
        for key, name, _ in PAPER_HEADS:
            c = cost["paper"][key]
            cols = cost_columns(c, backbones)
            lines.append(f"| {name} | {cols[0]} | {cols[1]} | {_ms(c['head']['latency'], 'b1')} "
                         f"| {_ms(c['head']['latency'], 'b32')} | {cols[2]} | {cols[3]} |")
    if backbones:
        lines += ["", "Backbones alone: " + "; ".join(
            f"{k}: {v['params'] / 1e6:.2f} M params, {v['gflops']:.2f} GFLOPs, "
            f"{_ms(v['latency'], 'b1')} ms/img b1, {_ms(v['latency'], 'b32')} ms/img b32"
            for k, v in backbones.items()) + "."]
    lines += ["", "Figure: `paper_comparison.png` (ZSL mAP per regime, inference time, "
              "GFLOPs).", ""]
    return "\n".join(lines)


def setup_note(report: dict) -> str:
    """What every method shares, read from the configurations that were trained."""
    configs = [r["config"] for r in report["runs"] if r["group"] == "main"]
    ml2p = next((c for c in configs if c["model"]["head"] == "ml2p"), configs[0])
    epochs = sorted({c["epochs"] for c in configs if c["model"]["head"] != "conse"})
    versions = ", ".join(f"{k} v{v}" for k, v in report.get("dataset_versions", {}).items() if v)
    return (
        f"Budget **{report['budget']}**: {', '.join(map(str, epochs))} epoch(s) for every "
        f"trained head; seeds per training dataset {report['seeds']}"
        + (f"; dataset versions: {versions}" if versions else "") + ". "
        "Each dataset trains its own methods on its seen labels (every label unseen in "
        f"{' or '.join(ml2p['eval_datasets'])} removed from training) and tests them on its own "
        "test splits (EmojiTags: the same-style test split, and the held-out openmoji art style "
        "as `test-shift`, the style-shift column). Every method: the same frozen "
        "EfficientNet-Lite0 features (cached), the same label side (MiniLM sentence vectors, "
        f"centred, projection to D = {ml2p['model']['dim']}; ConSE: D = 384, no projection, "
        "centred or raw), the same optimiser (AdamW, "
        f"lr {ml2p['lr']}, batch {ml2p['batch_size']}) and epochs: the default recipe with the "
        "head swapped (`models/recipes/<method>.json`), each head with its own loss (method.md "
        f"§3). ML2P head: {json.dumps(ml2p['model']['head_kwargs'])}. Regimes (`TrainConfig."
        "regime`, method.md §3): **(a) visual** — the backbone's taps only, ConSE over a "
        "classifier trained on the dataset's seen labels (a Linear over the pooled stride-32 "
        "tap, BCE); **(b) strict** — the backbone's ImageNet probabilities offered to every "
        "head through the same input (`models/heads/evidence.py`: a Linear C → D started at "
        "the class names' label vectors, added to ML2P's group vectors and Fast0Tag's "
        "direction, appended to LESA's and BiAM's features with w_l appended to their label "
        "classifiers), without the ImageNet classes that name an unseen label "
        "(`models/assets/imagenet_excluded.tsv`), ConSE over the kept ImageNet classes; "
        "**(b) all classes** — the same with all 1000 classes (what the shipped model uses). "
        "Taps: Fast0Tag pools the stride-32 tap (its original maps a global fc7 feature); LESA "
        "and BiAM attend over the stride-16 tap (VGG's 14×14 conv5 grid at 224; BiAM's global "
        "feature is the pooled stride-32 tap); ConSE mixes its T = 10 most probable classes.")


def verdict(report: dict) -> list[str]:
    """Per dataset and regime: ML2P against the strongest other method and the strongest
    ConSE variant, by ZSL mAP, with the paired interval of the difference."""
    from models.recipes import REGIME_NAMES

    out = []
    for dataset in report["datasets"]:
        for _, regime, acc in _cells(report, dataset):
            for split in TEST_SPLITS[dataset]:
                entry = acc["datasets"][split]
                methods = entry["methods"]
                if "ml2p" not in methods:
                    continue
                ours = methods["ml2p"]["zsl"]["map"]
                parts = []
                for label, keys in (("strongest other method",
                                     [k for k in methods if k not in ("ml2p", "random")]),
                                    ("strongest ConSE variant", CONSE_VARIANTS)):
                    best = best_of(methods, keys)
                    if best is None:
                        continue
                    margin = ours - methods[best]["zsl"]["map"]
                    text = (f"{label} {display_name(best, regime)} "
                            f"{_pct(methods[best]['zsl']['map'])} ({100 * margin:+.1f}")
                    paired = _paired(entry, best)
                    if paired:
                        lo, hi = paired["zsl"]
                        text += (f"; paired {_interval(paired['zsl'])}, "
                                 + ("above 0" if lo > 0 else "below 0" if hi < 0
                                    else "includes 0"))
                    parts.append(text + ")")
                random = methods.get("random", {}).get("zsl", {}).get("map")
                line = (f"- {split}, {REGIME_NAMES[regime]}: ML2P ZSL mAP {_pct(ours)}, GZSL "
                        f"{_pct(methods['ml2p']['gzsl']['map'])}; " + "; ".join(parts))
                if random is not None:
                    line += f"; random ranking {_pct(random)}"
                out.append(line + ".")
    return out


def figure(report: dict, path: Path) -> Path:
    """ZSL mAP per regime for each training dataset, then inference time and GFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = report.get("cost") or {}
    datasets = [d for d in report["datasets"] if _cells(report, d)]
    rows = 2 if cost.get("project") else 1
    fig, axes = plt.subplots(rows, max(len(datasets), 2), figsize=(14, 5.2 * rows), dpi=80,
                             squeeze=False)
    axes = axes.ravel()
    for ax, dataset in zip(axes, datasets, strict=False):
        cells = _cells(report, dataset)
        split = TEST_SPLITS[dataset][0]
        keys = ["conse-best", "fast0tag", "lesa", "biam", "ml2p"]
        width = 0.8 / len(cells)
        for i, (_, regime, acc) in enumerate(cells):
            methods = acc["datasets"][split]["methods"]
            best = best_of(methods, CONSE_VARIANTS)
            vals = [100 * methods[best if k == "conse-best" else k]["zsl"]["map"]
                    if (best if k == "conse-best" else k) in methods else 0.0 for k in keys]
            bars = ax.bar(np.arange(len(keys)) + (i - (len(cells) - 1) / 2) * width, vals,
                          width, label=REGIME_SHORT[regime])
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
        if "random" in cells[0][2]["datasets"][split]["methods"]:
            ax.axhline(100 * cells[0][2]["datasets"][split]["methods"]["random"]["zsl"]["map"],
                       color="grey", linestyle=":", label="random ranking")
        ax.set_xticks(np.arange(len(keys)), ["ConSE (best)", "Fast0Tag", "LESA", "BiAM",
                                              "ML2P"], fontsize=8)
        ax.set_ylabel("ZSL mAP (%)")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
        ax.set_title(f"{split}: zero-shot mAP by regime")
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    if cost.get("project"):
        backbones = cost["backbones"]
        keys = list(cost["project"])
        labels = [textwrap.fill(f"{display_name(k.split('/')[1], k.split('/')[0])} "
                                f"{REGIME_SHORT[k.split('/')[0]]}", 16) for k in keys]
        for ax, (metric, ylabel, title) in zip(axes[rows * 2 - 2:], (
                (lambda e: e["end_to_end"]["b1"]["median_ms_per_image"],
                 "ms per image, batch 1", f"Inference time, CPU {report.get('engine')}, "
                 f"{report['threads']} thread(s)"),
                (lambda e: backbones[e["backbone"]]["gflops"] + e["head"]["gflops"],
                 "GFLOPs per image", "GFLOPs (backbone + head)")), strict=True):
            vals = [metric(cost["project"][k]) for k in keys]
            bars = ax.bar(np.arange(len(keys)), vals, color="#7f7f7f")
            ax.bar_label(bars, fmt="%.3g", fontsize=6)
            ax.set_xticks(np.arange(len(keys)), labels, fontsize=6, rotation=90)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench paper`."""
    from models.recipes import REGIMES

    parser.add_argument("--budget", choices=["small", "full"], default="small",
                        help="small: every run at the small epoch budget, seed 0; full: the "
                             "recipes' epochs and seeds 0 1 2 (ablations stay small)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="training seeds of the main methods on every dataset (default: "
                             "0 small, 0 1 2 full)")
    parser.add_argument("--dataset-seeds", action="append", default=[],
                        metavar="DATASET=S[,S...]",
                        help="seeds for one training dataset instead, e.g. emojitags=0")
    parser.add_argument("--datasets", nargs="+", choices=TRAIN_DATASETS,
                        default=list(TRAIN_DATASETS), help="training datasets (default: both)")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES),
                        help="regimes (default: all three)")
    parser.add_argument("--methods", nargs="+", metavar="NAME", choices=[k for k, *_ in MAIN],
                        help="only these main methods (default: all)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ML2P ablations")
    parser.add_argument("--no-cost", action="store_true",
                        help="skip the cost measurement (parameters, GFLOPs, latency)")
    parser.add_argument("--no-paper-config", action="store_true",
                        help="skip the VGG19-BN paper-configuration cost measurement")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency point")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for training and timing")
    parser.add_argument("--jobs", type=int, default=1,
                        help="checkpoints trained at once, each in its own process with "
                             "--threads threads (e.g. --jobs 2 on 2 cores)")
    parser.add_argument("--engine", choices=["onnxruntime", "torch"], default="onnxruntime",
                        help="latency on the exported ONNX graphs in onnxruntime (the serving "
                             "engine) or in PyTorch eager")
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="bootstrap resamples of test images for the mAP intervals")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/paper_comparison.json"))
    parser.add_argument("--train-only", action="store_true",
                        help="train (or find) every checkpoint and stop")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the .md and .png beside --out from its JSON (no "
                             "training, evaluation or timing)")


def seeds_by_dataset(args: argparse.Namespace) -> dict[str, list[int]]:
    default = args.seeds or ([0] if args.budget == "small" else [0, 1, 2])
    seeds = {d: list(default) for d in TRAIN_DATASETS}
    for item in args.dataset_seeds:
        dataset, sep, values = item.partition("=")
        if not sep or dataset not in TRAIN_DATASETS:
            raise SystemExit(f"--dataset-seeds expects DATASET=S[,S...] with DATASET one of "
                             f"{', '.join(TRAIN_DATASETS)}; got {item!r}")
        seeds[dataset] = [int(v) for v in values.split(",") if v]
    return seeds


def history_seconds(checkpoint: Path) -> float:
    """The epochs' own training seconds, as the checkpoint's history records them."""
    import torch

    history = torch.load(checkpoint, map_location="cpu", weights_only=True).get("history") or []
    return float(sum(r.get("seconds", 0.0) for r in history))


def write_outputs(report: dict, out: Path) -> None:
    """The report's JSON (unless it is the file read), its table and its figure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(report))
    figure(report, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.render:  # the same JSON, rendered again (e.g. after a change to the table writer)
        report = json.loads(Path(args.out).read_text())
        report["verdict"] = verdict(report)
        write_outputs(report, Path(args.out))
        return report
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.runs < 20:
        log.warning("--runs %d: fewer than the 20 timed runs the report promises", args.runs)
    seeds = seeds_by_dataset(args)
    runs = plan_runs(args.budget, seeds, not args.no_ablations,
                     tuple(args.methods) if args.methods else None, tuple(args.datasets),
                     tuple(args.regimes))
    if args.jobs > 1:
        train_missing(runs, args.jobs, args.threads)
    for item in sorted(runs, key=lambda r: _cost_rank(r)):
        log.info("checkpoint %s %s seed %d (%s)", item.get("cell", "ablation"), item["key"],
                 item["seed"], item["hash"])
        path, cached = ensure_checkpoint(item["config"])
        item.update(checkpoint=str(path), cached=cached,
                    train_seconds=round(history_seconds(path), 1))
    if args.train_only:
        for item in runs:
            print(f"{item.get('cell', 'ablation'):28s} {item['key']:16s} seed {item['seed']}  "
                  f"{item['hash']}  {'cached' if item['cached'] else 'trained'}  "
                  f"{item['train_seconds']:.0f} s  {item['checkpoint']}")
        return {"runs": runs}

    from models.evaluate import evaluate_methods

    command = " ".join(["ml2p bench paper", *args.argv])
    phases = {"checkpoints": round(time.perf_counter() - started, 1)}
    t0 = time.perf_counter()
    accuracy: dict[str, dict] = {}
    main_runs = [r for r in runs if r["group"] == "main"]
    for cell in dict.fromkeys(r["cell"] for r in main_runs):
        in_cell = [r for r in main_runs if r["cell"] == cell]
        methods = {k: [Path(r["checkpoint"]) for r in sorted(in_cell, key=lambda r: r["seed"])
                       if r["key"] == k] for k, *_ in MAIN if any(r["key"] == k for r in in_cell)}
        log.info("evaluating %s: %s", cell, list(methods))
        accuracy[cell] = evaluate_methods(methods, list(TEST_SPLITS[in_cell[0]["dataset"]]),
                                          bootstrap=args.bootstrap, command=command)
    phases["evaluation"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ablation_accuracy, same_as = None, {}
    ablation_runs = [r for r in runs if r["group"] == "ablation"]
    if ablation_runs:
        by_hash: dict[str, str] = {}
        for r in ablation_runs:
            if r["hash"] in by_hash:
                same_as[r["key"]] = by_hash[r["hash"]]
            else:
                by_hash[r["hash"]] = r["key"]
        log.info("evaluating the ablations")
        ablation_accuracy = evaluate_methods(
            {r["key"]: [Path(r["checkpoint"])] for r in ablation_runs}, ["voc2007"],
            bootstrap=0, random=False, command=command)
    phases["ablation_evaluation"] = round(time.perf_counter() - t0, 1)
    cost = None
    if not args.no_cost:
        t0 = time.perf_counter()
        # one checkpoint per (regime, method) on VOC: the head, not the data, sets the cost
        project = {f"{r['regime']}/{r['key']}": Path(r["checkpoint"]) for r in main_runs
                   if r["dataset"] == "voc2007" and r["key"] != "conse-raw"}
        cost = measure_cost(project, args.runs, paper=not args.no_paper_config,
                            engine=args.engine, threads=args.threads)
        phases["cost"] = round(time.perf_counter() - t0, 1)
    shipped_seed0 = next((r for r in main_runs if r["cell"] == "voc2007/imagenet-all"
                          and r["key"] == "ml2p" and r["seed"] == 0), None)
    report = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget": args.budget, "small_epochs": SMALL_EPOCHS, "ablation_epochs": ABLATION_EPOCHS,
        "seeds": seeds, "datasets": args.datasets, "regimes": args.regimes,
        "dataset_versions": {split: entry["dataset_version"] for cell in accuracy.values()
                             for split, entry in cell["datasets"].items()},
        "threads": args.threads, "runs_per_point": args.runs, "engine": args.engine,
        "runs": [{k: v for k, v in r.items() if k != "config"}
                 | {"config": r["config"].to_json()} for r in runs],
        "accuracy": accuracy,
        "ablation_accuracy": ablation_accuracy, "ablation_same_as": same_as,
        "cost": cost,
        "shipped_max_abs_difference": (shipped_difference(Path(shipped_seed0["checkpoint"]))
                                       if shipped_seed0 else None),
        "train_seconds": round(sum(r["train_seconds"] for r in runs), 1),
        "phase_seconds": phases,
    }
    report["verdict"] = verdict(report)
    report["machine"] = machine()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(report, Path(args.out))
    return report


def _cost_rank(run: dict) -> tuple[int, int, int]:
    """Cheap runs first (VOC before EmojiTags, seed by seed), so a partial run already has most
    of the table."""
    order = ["conse", "conse-raw", "fast0tag", "lesa", "ml2p", "biam"]
    return (run["dataset"] != "voc2007", run["seed"],
            order.index(run["key"]) if run["key"] in order else 4)


def main(argv: list[str] | None = None) -> int:
    return command_main("paper", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
