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
import copy
import functools
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
DATASETS = ("voc2007", "emojitags")
SCORED_LABELS = 20  # labels scored inside the head's cost (VOC's vocabulary size)
BATCHES = (1, 32)
# key, display name, recipe
MAIN = (
    ("conse", "ConSE", "conse"),
    ("conse-all", "ConSE (all ImageNet classes)", "conse-all"),
    ("fast0tag", "Fast0Tag", "fast0tag"),
    ("lesa", "LESA", "lesa"),
    ("biam", "BiAM", "biam"),
    ("ml2p", "ML2P", "default"),
)
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


def resolve_config(recipe: str, epochs: int | None = None, seed: int = 0):  # noqa: ANN201
    """The TrainConfig of `recipe` at `epochs` (None: the recipe's) and `seed`.

    A training-free recipe (epochs 0) stays at 0 whatever the budget.
    """
    from models.recipes import load_recipe
    from models.train import TrainConfig

    data = copy.deepcopy(load_recipe(recipe))
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
    """{hash: config JSON} of the runs still to train (not cached, not the shipped model),
    each configuration once."""
    todo: dict[str, dict] = {}
    for item in runs:
        if item["hash"] in todo or shipped_matches(item["hash"]):
            continue
        if not (checkpoint_root() / item["hash"] / "model.pt").exists():
            todo[item["hash"]] = item["config"].to_json()
    return todo


def train_missing(runs: list[dict], jobs: int, threads: int) -> float:
    """Train the runs' checkpoints that are neither cached nor the shipped model, `jobs` at a
    time in separate processes (slowest first); returns the wall seconds spent."""
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


def shipped_matches(digest: str, path: Path | None = None) -> bool:
    """Whether the shipped default model was trained with the configuration hashing to
    `digest` (its provenance records the TrainConfig)."""
    path = path or SHIPPED
    if not path.exists():
        return False
    return _trained_config_hash(path, path.stat().st_mtime_ns) == digest


@functools.lru_cache(maxsize=8)
def _trained_config_hash(path: Path, mtime_ns: int) -> str | None:
    """config_hash of the TrainConfig in a checkpoint's provenance, read once per file
    version (`mtime_ns` is part of the cache key); None when unreadable."""
    import torch

    from models.train import TrainConfig

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config = TrainConfig(**payload["provenance"]["train_config"])
    except (KeyError, TypeError, RuntimeError) as exc:
        log.warning("cannot read the training configuration of %s: %s", path, exc)
        return None
    return config_hash(config)


def plan_runs(budget: str, seeds: list[int] | None = None, ablations: bool = True,
              skip: tuple[str, ...] = ()) -> list[dict]:
    """Every (method, seed) training run of the bench, with its config and hash."""
    if seeds is None:
        seeds = [0] if budget == "small" else [0, 1, 2]
    main_epochs = SMALL_EPOCHS if budget == "small" else None
    runs = []
    for key, name, recipe in MAIN:
        if key in skip:
            continue
        for seed in seeds:
            config = resolve_config(recipe, main_epochs, seed)
            runs.append({"key": key, "name": name, "recipe": recipe, "seed": seed,
                         "group": "main", "config": config, "hash": config_hash(config)})
    if ablations:
        for key, name, recipe in ABLATIONS:
            config = resolve_config(recipe, ABLATION_EPOCHS, 0)
            runs.append({"key": key, "name": name, "recipe": recipe, "seed": 0,
                         "group": "ablation", "config": config, "hash": config_hash(config)})
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


def markdown(report: dict) -> str:
    acc, cost = report["accuracy"], report.get("cost", {})
    backbones = cost.get("backbones", {})
    names = {r["key"]: r["name"] for r in report["runs"]}
    names["random"] = "random ranking"
    lines = [
        "# The paper's comparison: ConSE, Fast0Tag, LESA, BiAM and ML2P",
        "",
        f"Command: `{report['command']}` ({report['created']}; wall time "
        f"{report['wall_seconds'] / 60:.1f} min, of which training "
        f"{report['train_seconds'] / 60:.1f} min; "
        + ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min"
                    for k, v in report.get("phase_seconds", {}).items())
        + f"). Machine: {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores (shared with other jobs; load average "
        f"{report['machine']['load_average']} at the end), torch {report['machine']['torch']}, "
        f"{report['threads']} thread(s).",
        "",
        f"Budget **{report['budget']}**: {report['budget_note']} Seeds of the main methods: "
        f"{report['seeds']}. {report['ml2p_note']}",
        "",
        setup_note(report),
        "",
        f"Accuracy (%): {acc['inclusion_rule']}. mAP with its 95 % bootstrap interval "
        f"({acc['bootstrap_samples']} resamples of test images).",
        "",
        "Cost: params in millions and GFLOPs per image as backbone / head (GFLOPs counted from "
        "each part's ONNX graph by `models.flops.count_flops`, 1 multiply-add = 2 FLOPs, "
        f"Conv/MatMul/Gemm; the head includes scoring {SCORED_LABELS} labels); latency in ms "
        f"per image, end to end (backbone + head), {TIMING_ENGINES[report.get('engine', 'torch')]} "
        f"fp32 on this CPU, {report['threads']} thread(s), median of "
        f"{report['runs_per_point']} runs after 3 warm-up runs (p10–p90), every point timed "
        "round-robin in one loop so that load from other jobs falls on all methods alike.",
        "",
    ]
    acc_header = "| method | " + " | ".join(
        f"{d} {s} {m}" for d in ("VOC", "Emoji") for s in ("ZSL", "GZSL")
        for m in ("mAP", "F1@3", "F1@5")) + " |"
    header = acc_header + " params M (bb / head) | GFLOPs (bb / head) | ms/img b1 | ms/img b32 |"
    ncols = 1 + 12 + 4

    def rows(acc: dict, keys: list[str], with_cost: bool) -> list[str]:
        out = []
        for key in keys:
            cells = [names.get(key, key)]
            for dataset in DATASETS:
                values = acc["datasets"][dataset]["methods"].get(key)
                for setting in ("zsl", "gzsl"):
                    if values is None:
                        cells += ["–"] * 3
                        continue
                    v = values[setting]
                    cells += [_map_cell(v), _pct(v["f1_3"]), _pct(v["f1_5"])]
            if with_cost:
                project_cost = cost.get("project", {}).get(key)
                cells += (cost_columns(project_cost, backbones) if project_cost else ["–"] * 4)
            out.append("| " + " | ".join(cells) + " |")
        return out

    main_keys = ["random"] + [k for k, _, _ in MAIN if k in acc["datasets"][DATASETS[0]]
                              ["methods"]]
    lines += ["## Main comparison (this project's configuration)", "", header,
              "|" + "---|" * ncols] + rows(acc, main_keys, True)
    lines.append("")
    for dataset in DATASETS:
        diffs = acc["datasets"][dataset].get("map_difference_ci95", {})
        if diffs:
            parts = [f"{names.get(p.split(' - ')[1], p)} ZSL [{100 * d['zsl'][0]:+.1f}, "
                     f"{100 * d['zsl'][1]:+.1f}] GZSL [{100 * d['gzsl'][0]:+.1f}, "
                     f"{100 * d['gzsl'][1]:+.1f}]" for p, d in diffs.items()]
            lines.append(f"ML2P − other mAP on {dataset}, 95 % paired bootstrap interval: "
                         + "; ".join(parts) + ".")
    outside = [d for d in DATASETS for v in acc["datasets"][d]["methods"].values()
               for st in ("zsl", "gzsl") if "map_ci95" in v[st]
               and not v[st]["map_ci95"][0] <= v[st]["map"] <= v[st]["map_ci95"][1]]
    if outside:
        lines.append(
            f"Note: on {', '.join(sorted(set(outside)))} some mAP estimates lie outside their "
            "bootstrap interval: a resample leaves out the labels with few positive test images "
            "(labels without a positive are skipped in mAP), and those have low AP, so the "
            "resampled mAP is biased upward; compare methods there by the paired differences.")
    info = [f"{d}: {acc['datasets'][d]['test_images']} test images, "
            f"{acc['datasets'][d]['labels']} labels ({acc['datasets'][d]['unseen_labels']} "
            "unseen)" for d in DATASETS]
    lines += ["", "Test sets: " + "; ".join(info) + ".", ""]
    lines += report.get("verdict", [])
    abl = report.get("ablation_accuracy")
    if abl:
        abl_keys = [k for k, _, _ in ABLATIONS if k in abl["datasets"][DATASETS[0]]["methods"]]
        same = report.get("ablation_same_as", {})
        lines += ["", f"## ML2P ablations (smaller budget: {ABLATION_EPOCHS} epoch(s), seed 0)", "",
                  "Each row is the default recipe with one setting changed; rows with the same "
                  "configuration share one checkpoint (" + (", ".join(
                      f"{names[k]} = {names[v]}" for k, v in same.items()) or "none") + ").",
                  "", acc_header, "|" + "---|" * (ncols - 4)]
        lines += rows(abl, abl_keys, False)
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
    lines += ["", "Figure: `paper_comparison.png` (ZSL mAP, inference time, GFLOPs).", ""]
    return "\n".join(lines)


def setup_note(report: dict) -> str:
    """What every method shares, read from the configurations that were trained."""
    configs = {r["key"]: r.get("config") for r in report["runs"] if r.get("config")}
    ml2p = configs.get("ml2p") or next(iter(configs.values()), None)
    if ml2p is None:
        return ""
    head = ml2p["model"]["head_kwargs"]
    evidence = (f" The ML2P default also reads the backbone's ImageNet probabilities "
                f"(`imagenet_evidence_dim` {head['imagenet_evidence_dim']}, `evidence_init` "
                f"{ml2p.get('evidence_init', 'zeros')})."
                if head.get("imagenet_evidence_dim") else "")
    return (
        "Every method: the same frozen EfficientNet-Lite0 features (cached), training on "
        f"{' + '.join(ml2p['datasets'])} with every label unseen in "
        f"{' or '.join(ml2p['eval_datasets'])} removed, the same label side (MiniLM sentence "
        f"vectors, centred, projection to D = {ml2p['model']['dim']}), the same optimiser "
        f"(AdamW, lr {ml2p['lr']}, batch {ml2p['batch_size']}), epochs and ImageNet "
        f"distillation weight ({ml2p['distill_weight']}): the default recipe with the head "
        "swapped (`models/recipes/<method>.json`), each head with its own loss (method.md §3). "
        f"ML2P default head: {json.dumps(head)}.{evidence} Taps: Fast0Tag pools the stride-32 "
        "tap (its original maps a global fc7 feature); LESA and BiAM attend over the stride-16 "
        "tap (VGG's 14×14 conv5 grid at 224; BiAM's global feature is the pooled stride-32 "
        "tap); ConSE reads the backbone's own ImageNet logits (T = 10; ImageNet classes naming "
        "an unseen label excluded, or all 1000 kept in the 'all ImageNet classes' row).")


def verdict(acc: dict, names: dict) -> list[str]:
    """Whether ML2P tops the ZSL mAP column on each dataset, and by how much."""
    out = []
    for dataset in DATASETS:
        methods = acc["datasets"][dataset]["methods"]
        if "ml2p" not in methods:
            continue
        others = {k: v["zsl"]["map"] for k, v in methods.items() if k not in ("ml2p", "random")}
        if not others:
            continue
        best = max(others, key=others.get)
        margin = methods["ml2p"]["zsl"]["map"] - others[best]
        word = "tops" if margin > 0 else "does not top"
        ours = _pct(methods["ml2p"]["zsl"]["map"])
        line = (f"- {dataset}: ML2P {word} the ZSL mAP column: {ours}"
                f" vs the best baseline {names.get(best, best)} {_pct(others[best])} "
                f"({100 * margin:+.1f} points")
        paired = acc["datasets"][dataset].get("map_difference_ci95", {}).get(f"ml2p - {best}")
        if paired:
            lo, hi = paired["zsl"]
            line += (f"; paired 95 % interval [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                     + (", which includes 0: not a significant difference" if lo <= 0 <= hi
                        else ""))
        random = methods.get("random", {}).get("zsl", {}).get("map")
        if random is not None and methods["ml2p"]["zsl"]["map"] < 2 * random:
            line += (f"; every method is within 2× of a random ranking ({_pct(random)}) "
                     "here")
        out.append(line + ").")
    return out


def figure(report: dict, path: Path) -> Path:
    """Three bar charts as the poster: ZSL mAP, inference time, GFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, cost = report["accuracy"], report.get("cost", {})
    names = {r["key"]: r["name"] for r in report["runs"]}
    keys = [k for k, _, _ in MAIN if k in acc["datasets"][DATASETS[0]]["methods"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), dpi=80,
                             gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
    x = np.arange(len(keys))
    width = 0.38
    for i, dataset in enumerate(DATASETS):
        vals = [100 * acc["datasets"][dataset]["methods"][k]["zsl"]["map"] for k in keys]
        bars = axes[0].bar(x + (i - 0.5) * width, vals, width, label=dataset)
        axes[0].bar_label(bars, fmt="%.1f", fontsize=7)
    axes[0].set_xticks(x, [textwrap.fill(names[k], 12) for k in keys], fontsize=8)
    axes[0].set_ylabel("ZSL mAP (%)")
    axes[0].set_title("Zero-shot mAP (Lite0 features)")
    axes[0].legend(fontsize=8)

    backbones = cost.get("backbones", {})
    paper_names = {k: n for k, n, _ in PAPER_HEADS}

    def panel(ax, metric: Callable, ylabel: str, title: str) -> None:  # noqa: ANN001
        """Per method two bars: whole model (backbone + head) and head alone; log scale."""
        labels, xs, totals, heads = [], [], [], []
        offset = 0
        for group, tag in (("project", "Lite0"), ("paper", "VGG")):
            for key, entry in cost.get(group, {}).items():
                total, head = metric(backbones[entry["backbone"]], entry)
                name = (names if group == "project" else paper_names).get(key, key)
                labels.append(f"{textwrap.fill(name, 12)}"
                              f"\n{tag}")
                xs.append(offset)
                totals.append(total)
                heads.append(head)
                offset += 1
            offset += 0.6
        xs_arr = np.array(xs)
        tiny = min([v for v in heads + totals if v > 0] or [1.0]) / 10
        bars = ax.bar(xs_arr - 0.2, totals, 0.4, color="#7f7f7f", label="backbone + head")
        ax.bar_label(bars, fmt="%.3g", fontsize=6)
        bars = ax.bar(xs_arr + 0.2, [max(h, tiny) for h in heads], 0.4, color="#1f77b4",
                      label="head alone")
        ax.bar_label(bars, labels=[f"{h:.2g}" for h in heads], fontsize=6)
        ax.set_xticks(xs_arr, labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=7)

    panel(axes[1], lambda b, e: (e["end_to_end"]["b1"]["median_ms_per_image"],
                                 e["head"]["latency"]["b1"]["median_ms_per_image"]),
          "ms per image, batch 1 (log)",
          f"Inference time, CPU {report.get('engine', 'torch')}, {report['threads']} thread(s)")
    panel(axes[2], lambda b, e: (b["gflops"] + e["head"]["gflops"], e["head"]["gflops"]),
          "GFLOPs per image (log)", "GFLOPs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench paper`."""
    parser.add_argument("--budget", choices=["small", "full"], default="small",
                        help="small: every run at the small epoch budget; full: the recipes' "
                             "epochs and 3 seeds for the main methods (ablations stay small)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="training seeds of the main methods (default: 0 small, 0 1 2 full)")
    parser.add_argument("--ml2p-checkpoint", nargs="+", metavar="CKPT",
                        help="use these default-model checkpoints for the ML2P row instead of "
                             "training the default recipe through the cache")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        choices=["conse", "conse-all", "fast0tag", "lesa", "biam", "ml2p"],
                        help="only these main methods (default: all)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ML2P ablations")
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


def run(args: argparse.Namespace) -> dict:
    import torch

    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.runs < 20:
        log.warning("--runs %d: fewer than the 20 timed runs the report promises", args.runs)
    wanted = set(args.methods or [k for k, _, _ in MAIN])
    skip = tuple(k for k, _, _ in MAIN if k not in wanted or (k == "ml2p" and args.ml2p_checkpoint))
    runs = plan_runs(args.budget, args.seeds, not args.no_ablations, skip)
    train_seconds = train_missing(runs, args.jobs, args.threads) if args.jobs > 1 else 0.0
    checkpoints: dict[str, dict] = {}
    shipped_used: list[int] = []
    for item in sorted(runs, key=lambda r: _cost_rank(r["key"])):
        t0 = time.perf_counter()
        log.info("checkpoint %s seed %d (%s)", item["key"], item["seed"], item["hash"])
        if shipped_matches(item["hash"]):
            path, cached = SHIPPED, True  # the shipped default model is this very config
            if item["key"] == "ml2p":
                shipped_used.append(item["seed"])
        else:
            path, cached = ensure_checkpoint(item["config"])
        item.update(checkpoint=str(path), cached=cached,
                    train_seconds=round(time.perf_counter() - t0, 1))
        train_seconds += 0 if cached else time.perf_counter() - t0
        checkpoints.setdefault(item["key"], {})[item["seed"]] = path
    if args.ml2p_checkpoint:
        checkpoints["ml2p"] = dict(enumerate(Path(p) for p in args.ml2p_checkpoint))
        runs.append({"key": "ml2p", "name": "ML2P", "recipe": "default", "group": "main",
                     "seed": None, "checkpoint": args.ml2p_checkpoint, "cached": True,
                     "hash": None})
    if args.train_only:
        for item in runs:
            print(f"{item['key']:18s} seed {item['seed']}  {item['hash']}  "
                  f"{'cached' if item['cached'] else 'trained'}  {item['checkpoint']}")
        return {"runs": runs}

    from models.evaluate import evaluate_methods

    command = " ".join(["ml2p bench paper", *args.argv])
    main = {k: [checkpoints[k][s] for s in sorted(checkpoints[k])] for k, _, _ in MAIN
            if k in checkpoints}
    log.info("evaluating %s", list(main))
    phases = {"checkpoints": round(time.perf_counter() - started, 1)}
    t0 = time.perf_counter()
    accuracy = evaluate_methods(main, list(DATASETS), bootstrap=args.bootstrap, command=command)
    phases["evaluation"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ablation_accuracy, same_as = None, {}
    ablation_runs = [r for r in runs if r["group"] == "ablation"]
    if ablation_runs:
        by_hash: dict[str, str] = {}
        for r in runs:  # the main ML2P seed-0 run first, so an identical ablation points at it
            if r["group"] == "main" and r["key"] == "ml2p" and r["seed"] == 0 and r["hash"]:
                by_hash[r["hash"]] = "ml2p"
        for r in ablation_runs:
            if r["hash"] in by_hash:
                same_as[r["key"]] = by_hash[r["hash"]]
            else:
                by_hash[r["hash"]] = r["key"]
        log.info("evaluating the ablations")
        ablation_accuracy = evaluate_methods(
            {r["key"]: [Path(r["checkpoint"])] for r in ablation_runs}, list(DATASETS),
            bootstrap=0, random=False, command=command)
    phases["ablation_evaluation"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    cost = measure_cost({k: main[k][0] for k in main}, args.runs, paper=not args.no_paper_config,
                        engine=args.engine, threads=args.threads)
    phases["cost"] = round(time.perf_counter() - t0, 1)
    names = {r["key"]: r["name"] for r in runs}
    budget_note = (f"main methods {SMALL_EPOCHS} epochs (the default recipe's other settings "
                   "unchanged), one seed" if args.budget == "small" else
                   "main methods at their recipe's epochs")
    budget_note += f"; ablations {ABLATION_EPOCHS} epoch(s), seed 0."
    if args.ml2p_checkpoint:
        ml2p_note = f"The ML2P row is the default model's checkpoint(s) {args.ml2p_checkpoint}."
    elif shipped_used:
        ml2p_note = (f"The ML2P row (seed {shipped_used}) is the shipped default model "
                     f"`{SHIPPED.relative_to(REPO)}`: its training configuration hashes to "
                     "this budget's default-recipe run, so it is used as that run's checkpoint.")
    else:
        ml2p_note = ("The ML2P row is the default recipe's model trained here through the same "
                     "config-hash cache at this budget (no shipped default model with this "
                     "configuration existed when this ran).")
    report = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget": args.budget, "budget_note": budget_note, "ml2p_note": ml2p_note,
        "small_epochs": SMALL_EPOCHS, "ablation_epochs": ABLATION_EPOCHS,
        "seeds": sorted({r["seed"] for r in runs
                         if r["group"] == "main" and r["seed"] is not None}),
        "threads": args.threads, "runs_per_point": args.runs, "engine": args.engine,
        "runs": [{k: v for k, v in r.items() if k != "config"}
                 | {"config": r["config"].to_json() if "config" in r else None} for r in runs],
        "accuracy": accuracy,
        "ablation_accuracy": ablation_accuracy, "ablation_same_as": same_as,
        "cost": cost,
        "train_seconds": round(train_seconds, 1), "phase_seconds": phases,
    }
    report["verdict"] = verdict(accuracy, names)
    report["machine"] = machine()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(report))
    figure(report, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return report


def _cost_rank(key: str) -> int:
    """Cheap runs first, so a partial run already has most of the table."""
    order = ["conse", "conse-all", "fast0tag", "lesa", "ml2p"]
    return order.index(key) if key in order else (10 if key == "biam" else 5)


def main(argv: list[str] | None = None) -> int:
    return command_main("paper", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
