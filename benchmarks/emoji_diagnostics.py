"""Why EmojiTags zero-shot mAP is low: where the ceiling is, and which step loses it.

On the cached frozen EfficientNet-Lite0 features of EmojiTags (train: google + twitter art,
val: the same styles, test: held-out openmoji art) this measures, with the project's metrics
(`evaluate_zsl_gzsl`, inclusion "positive"):

1. random ranking (ZSL / GZSL mAP);
2. a semantic ceiling: an oracle that knows each test image's *seen* keywords exactly and
   ranks the unseen keywords by the MiniLM cosine to their mean (centred vectors) — what a
   perfect seen-keyword recogniser would transfer to unseen keywords through the label space;
3. seen-keyword recognition by a linear probe (one logistic output per seen keyword) on the
   pooled stride-32 tap: mAP over seen keywords on val (same art styles) and test (openmoji);
4. a zero-shot probe: pooled stride-32 tap → MLP → D = 128, MiniLM label vectors (centred) →
   linear → 128, cosine × 10, BCE on the seen keywords; ZSL / GZSL mAP on val and test after
   each `--report-every` epochs;
5. the same probe spatially (`--spatial`, default on): an embedding per position of the 7×7
   stride-32 grid, a label scored by a smooth maximum over positions.

Writes `benchmarks/results/emoji_diagnostics.{json,md}`. About 4 minutes on 2 CPU cores once the
feature caches exist (`ml2p data emojitags`, then any training or `ml2p eval` builds them).
Set `ML2P_EMOJITAGS_ROOT` to diagnose another build of the dataset (e.g. more train scenes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.label_embedders import create_embedder
from models.metrics import evaluate_zsl_gzsl, mean_average_precision
from models.train import SplitData, load_split

BACKBONE = "efficientnet_lite0"


def pooled(split: SplitData) -> torch.Tensor:
    """Mean-pooled stride-32 tap [N, 320]."""
    return torch.from_numpy(np.asarray(split.cache.taps[2][split.rows], np.float32).mean((2, 3)))


def zsl_gzsl(scores: np.ndarray, split: SplitData) -> dict:
    m = evaluate_zsl_gzsl(scores, split.targets, split.label_names, split.seen, include="positive")
    return {s: round(float(m[s]["map"]), 4) for s in ("zsl", "gzsl")}


def seen_map(scores: np.ndarray, split: SplitData) -> float:
    """mAP over the seen keywords (columns of `scores` are the seen keywords only)."""
    return round(float(mean_average_precision(scores, split.targets[:, split.seen] > 0)), 4)


def centred_label_vectors(names: list[str]) -> torch.Tensor:
    raw = create_embedder("minilm").embed(names)
    return F.normalize(torch.from_numpy(raw - raw.mean(0)), dim=-1)


def oracle(split: SplitData, labels: torch.Tensor) -> dict:
    known = torch.from_numpy(((split.targets > 0) & split.seen[None]).astype(np.float32))
    image = F.normalize(known @ labels, dim=-1)  # [N, E]: mean of its seen keywords' vectors
    return zsl_gzsl((image @ labels.T).numpy(), split)


def train_linear_probe(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(probe.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = F.binary_cross_entropy_with_logits(probe(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe


class ZeroShotProbe(torch.nn.Module):
    """Image features and label vectors mapped into D, cosine × scale.

    pooled: x [N, C] → one embedding per image. spatial: x [N, C, H, W] → one embedding per
    position, a label's score is a smooth maximum (log-sum-exp, sharpness 2) over positions,
    so one emoji in a corner can carry its keywords.
    """

    def __init__(self, feature_dim: int, label_dim: int, spatial: bool = False,
                 dim: int = 128, scale: float = 10.0) -> None:
        super().__init__()
        layer = ((lambda i, o: torch.nn.Conv2d(i, o, 1)) if spatial else torch.nn.Linear)
        self.image = torch.nn.Sequential(layer(feature_dim, 512), torch.nn.ReLU(),
                                         layer(512, dim))
        self.label = torch.nn.Linear(label_dim, dim)
        self.spatial, self.scale = spatial, scale

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        label = F.normalize(self.label(labels), dim=-1)  # [L, D]
        if not self.spatial:
            return self.scale * F.normalize(self.image(x), dim=-1) @ label.T  # [N, L]
        image = F.normalize(self.image(x).flatten(2), dim=1)  # [N, D, HW]
        per_position = self.scale * torch.einsum("ld,ndp->nlp", label, image)  # [N, L, HW]
        return torch.logsumexp(2 * per_position, dim=-1) / 2  # [N, L]


def train_zero_shot_probe(model: ZeroShotProbe, data: dict, labels: torch.Tensor,
                          seen: torch.Tensor, targets: torch.Tensor,
                          args: argparse.Namespace) -> list[dict]:
    """BCE on the seen keywords; ZSL / GZSL on val and test every `report_every` epochs.

    data: {"train" | "val" | "test": (features, SplitData)}.
    """
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    x_train = data["train"][0]
    curve = []
    for epoch in range(1, args.zsl_epochs + 1):
        for idx in torch.randperm(len(x_train)).split(64):
            # a bias of -5 starts every label near "absent", as most are
            loss = F.binary_cross_entropy_with_logits(model(x_train[idx], labels[seen]) - 5,
                                                      targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % args.report_every == 0:
            with torch.no_grad():
                curve.append({"epoch": epoch, **{
                    name: zsl_gzsl(torch.cat([model(c, labels) for c in x.split(128)]).numpy(),
                                   split)
                    for name, (x, split) in data.items() if name != "train"}})
    return curve


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, val, test = (load_split("emojitags", s, BACKBONE) for s in ("train", "val", "test"))
    labels = centred_label_vectors(train.label_names)  # [L, 384]
    seen = torch.from_numpy(train.seen)
    rng = np.random.default_rng(args.seed)
    report: dict = {
        "command": "python benchmarks/emoji_diagnostics.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "emojitags_root": os.environ.get("ML2P_EMOJITAGS_ROOT", "the default build"),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "threads": args.threads},
        "dataset": {name: {
            "images": len(s.rows), "labels": len(s.label_names),
            "unseen": int((~s.seen).sum())}
            for name, s in (("train", train), ("val", val), ("test", test))},
        "random": {name: zsl_gzsl(rng.random(s.targets.shape), s)
                   for name, s in (("val", val), ("test", test))},
        "oracle_seen_keywords": {name: oracle(s, labels) for name, s in (("val", val),
                                                                          ("test", test))},
    }
    x_train, x_val, x_test = pooled(train), pooled(val), pooled(test)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_val, x_test = ((x - mu) / sd for x in (x_train, x_val, x_test))
    y_train = torch.from_numpy((train.targets[:, train.seen] > 0).astype(np.float32))
    probe = train_linear_probe(x_train, y_train, args.probe_epochs, args.seed)
    with torch.no_grad():
        report["linear_probe_seen_map"] = {
            name: seen_map(probe(x).numpy(), s)
            for name, x, s in (("train", x_train, train), ("val", x_val, val),
                               ("test", x_test, test))}
    torch.manual_seed(args.seed)
    report["zero_shot_probe"] = train_zero_shot_probe(
        ZeroShotProbe(x_train.shape[1], labels.shape[1]),
        {"train": (x_train, train), "val": (x_val, val), "test": (x_test, test)},
        labels, seen, y_train, args)
    if args.spatial:
        grids = [torch.from_numpy(np.asarray(s.cache.taps[2][s.rows], np.float32))
                 for s in (train, val, test)]  # [N, 320, 7, 7]
        mu = grids[0].mean((0, 2, 3), keepdim=True)
        sd = grids[0].std((0, 2, 3), keepdim=True) + 1e-5
        grids = [(g - mu) / sd for g in grids]
        torch.manual_seed(args.seed)
        report["spatial_zero_shot_probe"] = train_zero_shot_probe(
            ZeroShotProbe(grids[0].shape[1], labels.shape[1], spatial=True),
            {"train": (grids[0], train), "val": (grids[1], val), "test": (grids[2], test)},
            labels, seen, y_train, args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(out.with_suffix(".md").read_text())
    return report


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(r: dict) -> str:
    d = r["dataset"]
    lines = [
        "# EmojiTags diagnostics: ceiling and bottleneck", "",
        f"Command: `{r['command']}` ({r['created']}, {r['seconds']} s, "
        f"{r['machine']['cpu_count']} CPUs, {r['machine']['threads']} thread(s); EmojiTags: "
        f"{r['emojitags_root']}). Frozen "
        "EfficientNet-Lite0 features; mAP in %, inclusion: images with ≥ 1 positive of the "
        "ranked label set. Splits: " + "; ".join(
            f"{k} {v['images']} images" for k, v in d.items())
        + f"; {d['train']['labels']} keywords ({d['train']['unseen']} unseen). Train and val "
        "scenes use google + twitter art, test scenes only openmoji art.", "",
        "| | val ZSL | val GZSL | test ZSL | test GZSL |", "|---|---|---|---|---|",
    ]

    def row(name: str, v: dict) -> str:
        return (f"| {name} | {_pct(v['val']['zsl'])} | {_pct(v['val']['gzsl'])} | "
                f"{_pct(v['test']['zsl'])} | {_pct(v['test']['gzsl'])} |")

    lines.append(row("random ranking", r["random"]))
    lines.append(row("oracle: true seen keywords → unseen by MiniLM similarity",
                     r["oracle_seen_keywords"]))
    for point in r["zero_shot_probe"]:
        lines.append(row(f"zero-shot probe (pooled), epoch {point['epoch']}", point))
    for point in r.get("spatial_zero_shot_probe", []):
        lines.append(row(f"zero-shot probe (spatial, max over 7×7), epoch {point['epoch']}",
                         point))
    p = r["linear_probe_seen_map"]
    lines += ["", f"Seen-keyword recognition, linear probe on the pooled stride-32 tap "
              f"(mAP over seen keywords): train {_pct(p['train'])}, val {_pct(p['val'])}, "
              f"test {_pct(p['test'])}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--zsl-epochs", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spatial", action=argparse.BooleanOptionalAction, default=True,
                        help="also the spatial zero-shot probe (a score per 7×7 position)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/emoji_diagnostics.json")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
