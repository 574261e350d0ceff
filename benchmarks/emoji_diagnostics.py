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
   stride-32 grid, a label scored by a smooth maximum over positions;
6. whether the frozen features know an emoji across art styles at all (`--sprites`, default
   on): every emoji of the catalog alone, centred at 150 px on white, in each style; the pooled
   stride-32 + stride-16 taps (centred, cosine); each openmoji (and, for reference, twitter)
   sprite retrieves its nearest google sprite out of all of them (top-1 / top-5 accuracy of
   the identity), and, zero-shot, ranks the unseen keywords by the MiniLM cosine to the seen
   keywords of its 5 nearest google + twitter sprites (ZSL mAP over sprites);
7. the same transfer inside the scenes, training-free (with `--sprites`): every position of
   the 7×7 stride-32 grid is matched against google + twitter prototypes of every emoji;
8. which property of the test scenes costs the most (`--factors`, default on): the openmoji
   test scenes are drawn again (same seed) with one layout factor changed — one
   emoji per scene, no rotation, a white background, larger emoji, all of these at once —
   and scored by the pooled zero-shot probe of 4. after `--factor-epochs` (its best epoch on
   val); the "as built" layout reproduces the test split itself.

Writes `benchmarks/results/emoji_diagnostics.{json,md}`. About 8 minutes on 2 CPU cores once the
feature caches exist (`ml2p data emojitags`, then any training or `ml2p eval` builds them).
Set `ML2P_EMOJITAGS_ROOT` to diagnose another build of the dataset (e.g. more train scenes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import write_report
from models.data.emojitags import SceneLayout
from models.label_embedders import create_embedder
from models.metrics import evaluate_zsl_gzsl, mean_average_precision
from models.train import SplitData, load_split

# the held-out openmoji scenes this report calls "test": EmojiTags v2's test-shift split (the
# v1 dataset's test split, scene for scene)
OPENMOJI_SPLIT = "test-shift"

if TYPE_CHECKING:
    import onnxruntime

BACKBONE = "efficientnet_lite0"
SPRITE_SIDE = 150
FACTOR_LAYOUTS = {
    "as built": SceneLayout(),
    "one emoji per scene": SceneLayout(max_emoji=1),
    "upright (no rotation)": SceneLayout(max_rotation=0),
    "white background": SceneLayout(plain_background=True),
    "larger emoji (0.5–0.7 of the side)": SceneLayout(scale=(0.5, 0.7)),
    "one emoji, 0.6–0.7 of the side, upright, on white": SceneLayout(
        max_emoji=1, scale=(0.6, 0.7), max_rotation=0, plain_background=True),
}


def pooled(split: SplitData) -> torch.Tensor:
    """Mean-pooled stride-32 tap [N, 320]."""
    return torch.from_numpy(np.asarray(split.cache.taps[2][split.rows], np.float32).mean((2, 3)))


def zsl_gzsl(scores: np.ndarray, split: SplitData) -> dict:
    return zsl_gzsl_of(scores, split.targets, split.label_names, split.seen)


def zsl_gzsl_of(scores: np.ndarray, targets: np.ndarray, names: list[str],
                seen: np.ndarray) -> dict:
    m = evaluate_zsl_gzsl(scores, targets, names, seen, include="positive")
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


def backbone_session(threads: int) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of the packaged backbone (taps at strides 8/16/32, logits)."""
    import onnxruntime

    from models.features import backbone_onnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(backbone_onnx(BACKBONE)), options,
                                providers=["CPUExecutionProvider"])


def sprite_features(styles: tuple[str, ...], threads: int, side: int = SPRITE_SIDE,
                    background: tuple[int, int, int] = (255, 255, 255)) -> tuple[dict, list]:
    """Every catalog emoji alone, centred at `side` px on `background`, per style:
    {"pooled": pooled stride-32 + stride-16 taps [N, 432], "centre": the stride-32 tap
    averaged over the 3×3 centre cells [N, 320], "image_mean": over all cells [N, 320]}."""
    from PIL import Image

    from artifact.imaging import preprocess
    from models.data.emojitags import fetch_art, load_art, read_catalog

    catalog = read_catalog(fetch_art())
    session = backbone_session(threads)
    offset = (224 - side) // 2

    def render(path: Path) -> np.ndarray:
        canvas = Image.new("RGBA", (224, 224), (*background, 255))
        sprite = load_art(path).resize((side, side), Image.BICUBIC)
        canvas.alpha_composite(sprite, (offset, offset))
        return preprocess(canvas.convert("RGB"))

    features = {}
    for style in styles:
        pooled, centre, image_mean = [], [], []
        for start in range(0, len(catalog), 64):
            images = np.stack([render(e.art[style]) for e in catalog[start:start + 64]])
            _, tap16, tap32, _ = session.run(None, {"image": images})
            pooled.append(np.concatenate([tap32.mean((2, 3)), tap16.mean((2, 3))], axis=1))
            centre.append(tap32[:, :, 2:5, 2:5].mean((2, 3)))
            image_mean.append(tap32.mean((2, 3)))
        features[style] = {"pooled": np.concatenate(pooled), "centre": np.concatenate(centre),
                           "image_mean": np.concatenate(image_mean)}
    return features, catalog


def keyword_matrix(catalog: list, names: list[str]) -> np.ndarray:
    """[emoji, labels] int8, 1 where the label is one of the emoji's keywords."""
    column = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(catalog), len(names)), np.int8)
    for row, emoji in enumerate(catalog):
        targets[row, [column[k] for k in emoji.keywords if k in column]] = 1
    return targets


def seen_keyword_matrix(catalog: list, names: list[str], seen: np.ndarray) -> torch.Tensor:
    """[emoji, labels] float, 1 where a *seen* label is one of the emoji's keywords."""
    return torch.from_numpy((keyword_matrix(catalog, names) * seen[None]).astype(np.float32))


def transfer(similarity: torch.Tensor, known: torch.Tensor, labels: torch.Tensor,
             k: int) -> np.ndarray:
    """Zero-shot scores [N, L]: every label's cosine to the mean seen-keyword vector of the k
    most similar gallery sprites (softmax-weighted, temperature 0.05)."""
    top, nearest = similarity.topk(k, dim=1)  # [N, k]
    weights = torch.softmax(top / 0.05, dim=1)
    image = F.normalize(torch.einsum("nk,nkl->nl", weights, known[nearest]) @ labels, dim=-1)
    return (image @ labels.T).numpy()


def sprite_retrieval(labels: torch.Tensor, names: list[str], seen: np.ndarray,
                     threads: int) -> dict:
    """Cross-style identity retrieval and kNN zero-shot transfer on isolated sprites."""
    features, catalog = sprite_features(("google", "twitter", "openmoji"), threads)
    features = {k: v["pooled"] for k, v in features.items()}
    mean = np.concatenate([features["google"], features["twitter"]]).mean(0)
    unit = {k: F.normalize(torch.from_numpy(v - mean), dim=-1) for k, v in features.items()}
    known = seen_keyword_matrix(catalog, names, seen)
    report: dict = {"emoji": len(catalog), "sprite_side": SPRITE_SIDE, "gallery": "google"}

    def identity(query: torch.Tensor, gallery: torch.Tensor) -> dict:
        similarity = query @ gallery.T  # [N, N]
        rank = (similarity > similarity.diagonal()[:, None]).sum(1)
        return {"top1": round(float((rank < 1).float().mean()), 4),
                "top5": round(float((rank < 5).float().mean()), 4)}

    for query in ("twitter", "openmoji"):
        report[f"{query}_to_google"] = identity(unit[query], unit["google"])
    # each style centred on its own mean: uses the openmoji statistics, so not a method, but
    # it shows how much of the gap is a shift of the whole style
    own = {k: F.normalize(torch.from_numpy(v - v.mean(0)), dim=-1) for k, v in features.items()}
    report["openmoji_to_google_own_mean"] = identity(own["openmoji"], own["google"])
    # zero-shot through the 5 nearest train-style sprites (the query's own emoji included:
    # every emoji is in the train scenes, only its unseen keywords are not labels)
    gallery = torch.cat([unit["google"], unit["twitter"]])  # [2N, E]
    targets = keyword_matrix(catalog, names)
    scores = transfer(unit["openmoji"] @ gallery.T, known.repeat(2, 1), labels, 5)
    metrics = evaluate_zsl_gzsl(scores, targets, names, seen, include="positive")
    chance = evaluate_zsl_gzsl(np.random.default_rng(0).random(scores.shape), targets, names,
                               seen, include="positive")
    report["openmoji_knn5_zero_shot"] = {"zsl": round(float(metrics["zsl"]["map"]), 4),
                                         "random_zsl": round(float(chance["zsl"]["map"]), 4)}
    return report


def scene_prototypes(labels: torch.Tensor, splits: dict[str, SplitData], threads: int) -> dict:
    """Training-free matching in the scenes: every position of the 7×7 stride-32 grid against
    google + twitter prototypes (each emoji alone at 96 px on grey, the 3×3 centre cells); an
    emoji's evidence is its best position; zero-shot transfer from the 20 best emoji. Two
    normalisations: one fixed mean (of the prototypes), or each image centred on its own
    spatial mean (per image, so usable at serving time)."""
    features, catalog = sprite_features(("google", "twitter"), threads, side=96,
                                        background=(128, 128, 128))
    centre = np.concatenate([features["google"]["centre"], features["twitter"]["centre"]])
    image_mean = np.concatenate([features["google"]["image_mean"],
                                 features["twitter"]["image_mean"]])
    fixed_mean = torch.from_numpy(centre.mean(0))
    galleries = {"fixed_mean": F.normalize(torch.from_numpy(centre) - fixed_mean, dim=-1),
                 "per_image_mean": F.normalize(torch.from_numpy(centre - image_mean), dim=-1)}
    any_split = next(iter(splits.values()))
    known = seen_keyword_matrix(catalog, any_split.label_names, any_split.seen).repeat(2, 1)
    report: dict = {name: {} for name in galleries}
    for name, split in splits.items():
        grid = torch.from_numpy(np.asarray(split.cache.taps[2][split.rows], np.float32))
        grid = grid.flatten(2).transpose(1, 2)  # [N, 49, 320]
        positions = {"fixed_mean": grid - fixed_mean,
                     "per_image_mean": grid - grid.mean(1, keepdim=True)}
        for rule, gallery in galleries.items():
            similarity = torch.einsum("npc,kc->nkp", F.normalize(positions[rule], dim=-1),
                                      gallery).amax(-1)  # [N, 2N]
            report[rule][name] = zsl_gzsl(transfer(similarity, known, labels, 20), split)
    return report


def scene_factors(train: SplitData, labels: torch.Tensor, x_train: torch.Tensor,
                  standardise: tuple[torch.Tensor, torch.Tensor], y_train: torch.Tensor,
                  args: argparse.Namespace) -> dict:
    """ZSL / GZSL of the pooled zero-shot probe on the openmoji test scenes drawn again under
    each of FACTOR_LAYOUTS (the dataset's seed: the same emoji wherever a layout keeps the
    number per scene)."""
    from artifact.imaging import load_and_preprocess
    from models.data.base import resolve_root
    from models.data.emojitags import (
        ENV_ROOT,
        default_root,
        fetch_art,
        generate_scenes,
        read_catalog,
    )

    names = train.label_names
    meta = json.loads((resolve_root(None, ENV_ROOT, default_root()) / "labels.json").read_text())
    catalog = read_catalog(fetch_art())  # generate_scenes keeps the emoji with a label
    seen = torch.from_numpy(train.seen)
    torch.manual_seed(args.seed)  # as for the probe of section 4: its curve at this epoch
    probe = ZeroShotProbe(x_train.shape[1], labels.shape[1])
    train_zero_shot_probe(probe, {"train": (x_train, train)}, labels, seen, y_train,
                          argparse.Namespace(zsl_epochs=args.factor_epochs,
                                             report_every=args.factor_epochs))
    session = backbone_session(args.threads)
    mean, std = standardise
    rng = np.random.default_rng(args.seed)
    report: dict = {"probe_epochs": args.factor_epochs, "dataset_seed": meta["seed"],
                    "layouts": {}}
    for name, layout in FACTOR_LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            records = generate_scenes(catalog, names, Path(tmp), OPENMOJI_SPLIT,
                                      len(meta["splits"][OPENMOJI_SPLIT]), meta["seed"], layout)
            pooled_tap = []
            for start in range(0, len(records), 64):
                images = np.stack([load_and_preprocess(str(Path(tmp) / r["file"]))
                                   for r in records[start:start + 64]])
                pooled_tap.append(session.run(None, {"image": images})[2].mean((2, 3)))
        targets = np.zeros((len(records), len(names)), np.int8)
        for row, record in enumerate(records):
            targets[row, record["labels"]] = 1
        with torch.no_grad():
            scores = probe((torch.from_numpy(np.concatenate(pooled_tap)) - mean) / std, labels)
        report["layouts"][name] = {
            "layout": asdict(layout), "scenes": len(records),
            "same_emoji_as_test_split": records == meta["splits"][OPENMOJI_SPLIT],
            "probe": zsl_gzsl_of(scores.numpy(), targets, names, train.seen),
            "random": zsl_gzsl_of(rng.random(targets.shape), targets, names, train.seen)}
    return report


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, val, test = (load_split("emojitags", s, BACKBONE)
                        for s in ("train", "val", OPENMOJI_SPLIT))
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
    if args.factors:
        report["scene_factors"] = scene_factors(train, labels, x_train, (mu, sd), y_train, args)
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
    if args.sprites:
        report["sprites"] = sprite_retrieval(labels, train.label_names, train.seen, args.threads)
        report["scene_prototypes"] = scene_prototypes(labels, {"val": val, "test": test},
                                                      args.threads)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(Path(args.out), report, markdown)
    print(Path(args.out).with_suffix(".md").read_text())
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
    for rule, text in (("fixed_mean", "one fixed mean"),
                       ("per_image_mean", "each image centred on its own mean")):
        if rule in r.get("scene_prototypes", {}):
            lines.append(row("training-free: each 7×7 position against google + twitter emoji "
                             f"prototypes, keywords of the 20 best ({text})",
                             r["scene_prototypes"][rule]))
    p = r["linear_probe_seen_map"]
    lines += ["", f"Seen-keyword recognition, linear probe on the pooled stride-32 tap "
              f"(mAP over seen keywords): train {_pct(p['train'])}, val {_pct(p['val'])}, "
              f"test {_pct(p['test'])}.", ""]
    if "scene_factors" in r:
        f = r["scene_factors"]
        lines += [
            "Which property of the test scenes costs the most: the openmoji test scenes drawn "
            f"again (dataset seed {f['dataset_seed']}: the same emoji wherever the number per "
            "scene is kept) with "
            "one layout factor changed, scored by the pooled zero-shot probe after "
            f"{f['probe_epochs']} epochs (as built: 1–4 emoji per scene, 0.22–0.6 of the side, "
            "rotated up to ±35°, solid / gradient / noise backgrounds).", "",
            "| test scenes | same emoji as the test split | ZSL | GZSL | random ZSL | "
            "random GZSL |", "|---|---|---|---|---|---|"]
        for name, v in f["layouts"].items():
            same = "yes" if v["same_emoji_as_test_split"] else "no"
            lines.append(f"| {name} | {same} | {_pct(v['probe']['zsl'])} | "
                         f"{_pct(v['probe']['gzsl'])} | {_pct(v['random']['zsl'])} | "
                         f"{_pct(v['random']['gzsl'])} |")
        lines.append("")
    if "sprites" in r:
        q = r["sprites"]
        lines += [
            f"The emoji alone ({q['emoji']} emoji, each centred at {q['sprite_side']} px on "
            "white; pooled stride-32 + stride-16 taps, cosine): its nearest google sprite is "
            f"the same emoji for {_pct(q['openmoji_to_google']['top1'])} % of openmoji sprites "
            f"(top-5 {_pct(q['openmoji_to_google']['top5'])} %; twitter → google "
            f"{_pct(q['twitter_to_google']['top1'])} % / {_pct(q['twitter_to_google']['top5'])}"
            f" %; chance {100 / q['emoji']:.2f} %; with each style centred on its own mean, "
            f"which uses the test style's statistics: "
            f"{_pct(q['openmoji_to_google_own_mean']['top1'])} % / "
            f"{_pct(q['openmoji_to_google_own_mean']['top5'])} %). Zero-shot through the 5 "
            "nearest google + twitter sprites' seen keywords, openmoji sprites reach ZSL mAP "
            f"{_pct(q['openmoji_knn5_zero_shot']['zsl'])} (random "
            f"{_pct(q['openmoji_knn5_zero_shot']['random_zsl'])}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--zsl-epochs", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spatial", action=argparse.BooleanOptionalAction, default=True,
                        help="also the spatial zero-shot probe (a score per 7×7 position)")
    parser.add_argument("--sprites", action=argparse.BooleanOptionalAction, default=True,
                        help="also cross-style retrieval of the emoji alone (section 6)")
    parser.add_argument("--factors", action=argparse.BooleanOptionalAction, default=True,
                        help="also the test scenes drawn again with one layout factor changed")
    parser.add_argument("--factor-epochs", type=int, default=10,
                        help="epochs of the pooled probe that scores them (its best on val)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/emoji_diagnostics.json")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
