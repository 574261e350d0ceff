"""`ml2p eval`: ZSL / GZSL accuracy of trained checkpoints beside ConSE and a random ranking.

Several checkpoints (one per seed) are reported as their mean with a bootstrap 95 % interval
over test images (the same resamples for every method, so paired differences are meaningful).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from artifact.manifest import Calibration, label_novelty
from models.heads import create_head
from models.label_embedders import create_embedder
from models.metrics import (
    ResampledAP,
    evaluate_zsl_gzsl,
    mean_over_labels,
    probability_quality,
)
from models.tagger import load_checkpoint
from models.train import SplitData, load_split, predict
from models.vocab import imagenet_class_names

METRICS = ("map", "f1_3", "f1_5")
# the ZSL convention of LESA/BiAM: images with >= 1 positive of the ranked label set
INCLUSION = "positive"


def test_split(spec: str, backbone: str) -> SplitData:
    """The evaluated split of `spec`: a dataset's `test`, or `NAME:SPLIT` (e.g.
    `emojitags:test-shift`, EmojiTags' held-out art style)."""
    name, _, split = spec.partition(":")
    return load_split(name, split or "test", backbone)


def dataset_version(spec: str) -> int | None:
    """The protocol version of a dataset that has one (EmojiTags), else None."""
    if spec.partition(":")[0] != "emojitags":
        return None
    from models.data.emojitags import read_meta

    return int(read_meta()["version"])


def conse_scores(split: SplitData, top_t: int = 10) -> np.ndarray:
    """Training-free ConSE on the backbone's own ImageNet classifier (method.md §3)."""
    embedder = create_embedder("minilm")
    head = create_head("conse", dim=embedder.dim, top_t=top_t)
    head.set_class_vectors(torch.from_numpy(embedder.embed(imagenet_class_names())))
    labels = torch.from_numpy(embedder.embed(split.label_names))
    logits = torch.from_numpy(np.asarray(split.cache.logits[split.rows], dtype=np.float32))
    with torch.no_grad():
        return head.score(head(None, logits), labels).numpy()


def random_scores(split: SplitData, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(split.targets.shape).astype(np.float32)


def summarise(score_sets: list[np.ndarray], split: SplitData) -> dict:
    """Mean over score sets (seeds / draws) of the ZSL and GZSL metrics."""
    runs = [evaluate_zsl_gzsl(s, split.targets, split.label_names, split.seen,
                              include=INCLUSION) for s in score_sets]
    out: dict = {}
    for setting in ("zsl", "gzsl"):
        out[setting] = {m: float(np.mean([r[setting][m] for r in runs])) for m in METRICS}
        if len(runs) > 1:
            out[setting]["per_run_map"] = [r[setting]["map"] for r in runs]
    return out


def bootstrap_map(score_sets: list[np.ndarray], split: SplitData, samples: int,
                  seed: int = 0) -> dict:
    """95 % interval of the seed-mean mAP, resampling test images with replacement (the
    INCLUSION rule applied to each resample; `ResampledAP` sorts each score set once)."""
    rng = np.random.default_rng(seed)
    n = len(split.targets)
    columns = {"zsl": np.flatnonzero(~split.seen), "gzsl": np.arange(len(split.seen))}
    rankers = {k: [ResampledAP(np.asarray(s)[:, cols], split.targets[:, cols])
                   for s in score_sets] for k, cols in columns.items()}
    included = {k: (split.targets[:, cols] == 1).any(1) for k, cols in columns.items()}
    draws: dict[str, list[float]] = {k: [] for k in columns}
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)  # the resample's rows
        for setting in columns:
            weights = counts * included[setting]
            draws[setting].append(float(np.mean([mean_over_labels(r.ap(weights))
                                                  for r in rankers[setting]])))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for k, v in draws.items()}, draws


def evaluate_checkpoints(checkpoints: list[Path], datasets: list[str], out: Path,
                         bootstrap: int = 1000) -> dict:
    """Evaluate checkpoints (one per seed) on each dataset's test split and write the table."""
    taggers = [load_checkpoint(path) for path in checkpoints]
    embedder = create_embedder(taggers[0].config["embedder"]["kind"])
    backbone = taggers[0].config["backbone"]
    report: dict = {
        "command": "ml2p eval " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else
                                           [str(c) for c in checkpoints]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoints": [str(c) for c in checkpoints],
        "inclusion_rule": "test images with at least one positive of the ranked label set "
                          "(the unseen labels for ZSL, all labels for GZSL); labels without a "
                          "positive are skipped in mAP; F1@K micro-averaged over those images",
        "bootstrap_samples": bootstrap,
        "datasets": {},
    }
    for name in datasets:
        split = test_split(name, backbone)
        ml2p = []
        for tagger in taggers:
            vectors = tagger.transform_labels(torch.from_numpy(embedder.embed(split.label_names)))
            ml2p.append(predict(tagger, split, vectors.detach()))
        methods = {
            "random": [random_scores(split, seed) for seed in range(10)],
            "conse": [conse_scores(split)],
            "ml2p": ml2p,
        }
        entry = {
            "dataset_version": dataset_version(name),
            "test_images": int(len(split.rows)),
            "labels": len(split.label_names),
            "unseen_labels": int((~split.seen).sum()),
            "methods": {m: summarise(s, split) for m, s in methods.items()},
        }
        if bootstrap:
            boot = {m: bootstrap_map(methods[m], split, bootstrap) for m in ("conse", "ml2p")}
            for m, (interval, _) in boot.items():
                for setting in ("zsl", "gzsl"):
                    entry["methods"][m][setting]["map_ci95"] = interval[setting]
            diffs = {s: np.array(boot["ml2p"][1][s]) - np.array(boot["conse"][1][s])
                     for s in ("zsl", "gzsl")}
            entry["ml2p_minus_conse_map_ci95"] = {
                s: [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
                for s, d in diffs.items()}
        report["datasets"][name] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown_table(report))
    return report


# `precision=auto` serves a variant only if, on the test split, its mAP change against fp32 is
# within GATE_MEAN points with a paired 95 % interval above GATE_LOWER, for ZSL and GZSL, and
# its top-5 labels match fp32's on at least GATE_TOP5 of the images
GATE_MEAN, GATE_LOWER, GATE_TOP5 = 0.5, -1.0, 0.90
GATE_RULE = (f"|mAP change| <= {GATE_MEAN} point and paired 95 % interval above {GATE_LOWER} "
             f"for ZSL and GZSL, top-5 identical on >= {GATE_TOP5:.0%} of images")


def gate(entry: dict) -> dict:
    """The accuracy gate of one variant entry (changes in mAP points)."""
    failed = []
    for setting in ("zsl", "gzsl"):
        change, low = entry[f"{setting}_change"], entry[f"{setting}_change_ci95"][0]
        if abs(change) > GATE_MEAN:
            failed.append(f"{setting.upper()} mAP change {change:+.2f} points")
        if low <= GATE_LOWER:
            failed.append(f"{setting.upper()} change interval reaches {low:+.2f}")
    if entry["top5_identical"] < GATE_TOP5:
        failed.append(f"top-5 identical on {entry['top5_identical']:.1%} of images")
    return {"passed": not failed, "rule": GATE_RULE, "failed": failed}


def evaluate_variants(artifact: Path, out: Path, bootstrap: int = 1000,
                      command: str = "") -> dict:
    """Each visual graph of `artifact` (fp32, fp16, int8) on VOC images/val: ZSL / GZSL mAP,
    the paired change against fp32 with its bootstrap interval, top-5 agreement, the gate.
    Merged into `out` (the accuracy table) as its `variants` section."""
    import hashlib
    from types import SimpleNamespace

    from artifact.imaging import load_and_preprocess
    from artifact.loader import load_artifact
    from models.data import load_dataset
    from models.export import graph_scores, label_vectors, top5_agreement

    loaded = load_artifact(artifact)
    files = {"fp32": loaded.manifest.files.visual,
             **{v: spec.file for v, spec in (loaded.manifest.variants or {}).items()
                if v != "fp32"}}
    data = load_dataset("voc2007", "test")
    labels = label_vectors(artifact, data.label_names)
    images = [load_and_preprocess(str(p)) for p in data.image_paths]
    split = SimpleNamespace(targets=data.targets, seen=data.seen)
    scores, draws = {}, {}
    for variant, name in files.items():
        scores[variant] = graph_scores(artifact / name, images, labels)
        _, draws[variant] = bootstrap_map([scores[variant]], split, bootstrap)
    section: dict = {"command": command, "artifact": loaded.key, "dataset": "voc2007 test "
                     "(images/val)", "images": len(images), "bootstrap_samples": bootstrap,
                     "gate_rule": GATE_RULE, "results": {}}
    reference = evaluate_zsl_gzsl(scores["fp32"], data.targets, data.label_names, data.seen,
                                  include=INCLUSION)
    for variant, name in files.items():
        result = evaluate_zsl_gzsl(scores[variant], data.targets, data.label_names, data.seen,
                                   include=INCLUSION)
        entry = {"dataset": section["dataset"], "images": len(images),
                 "sha256": hashlib.sha256((artifact / name).read_bytes()).hexdigest(),
                 "top5_identical": top5_agreement(scores["fp32"], scores[variant])
                 ["top5_identical"]}
        for setting in ("zsl", "gzsl"):
            entry[f"{setting}_map"] = round(100 * result[setting]["map"], 2)
            entry[f"{setting}_change"] = round(
                100 * (result[setting]["map"] - reference[setting]["map"]), 2)
            paired = 100 * (np.array(draws[variant][setting]) - np.array(draws["fp32"][setting]))
            entry[f"{setting}_change_ci95"] = [round(float(np.percentile(paired, 2.5)), 2),
                                               round(float(np.percentile(paired, 97.5)), 2)]
        entry["gate"] = gate(entry)
        section["results"][variant] = entry
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["variants"] = section
    if loaded.manifest.calibration is not None:
        report["probabilities"] = probability_section(
            loaded.manifest.calibration, scores["fp32"], labels, data, artifact, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown_table(report))
    return section


def probability_section(calibration: Calibration, scores: np.ndarray, labels: np.ndarray,
                        data, artifact: Path, command: str) -> dict:  # noqa: ANN001
    """The served calibration's probabilities on VOC images/val (every image, 20 labels),
    for the seen and unseen labels apart, beside the one-curve fit on the same data."""
    from models.export import label_vectors

    curves = {calibration.kind: calibration}
    if calibration.score_only is not None:
        curves["logistic (one curve, for comparison)"] = Calibration(
            a=calibration.score_only["a"], b=calibration.score_only["b"])
    novelty = (label_novelty(labels, label_vectors(artifact, calibration.reference_labels))
               if calibration.uses_novelty else None)
    return {"command": command, "dataset": "voc2007 test (images/val)",
            "images": int(len(scores)), "labels": len(data.label_names),
            "rule": "every test image and all 20 labels (as served); F1 of p >= 0.5 micro over "
                    "(image, label) pairs; ECE over 10 equal-width bins, in points",
            "novelty": (None if novelty is None else
                        {n: round(float(u), 4) for n, u, seen in
                         zip(data.label_names, novelty, data.seen, strict=True) if not seen}),
            "curves": {name: probability_quality(
                curve.probabilities(scores, novelty if curve.uses_novelty else None),
                data.targets, data.seen) for name, curve in curves.items()}}


def probability_markdown(section: dict | None) -> list[str]:
    if section is None:
        return []
    lines = [f"## Probabilities: {section['dataset']}, {section['images']} images, "
             f"{section['labels']} labels", "",
             f"Command: `{section['command']}`. Rule: {section['rule']}. Unseen labels' "
             f"novelty (1 − best cosine to a trained label): {section['novelty']}.", "",
             "| calibration | labels | F1 @ p ≥ 0.5 | precision | recall | mean p of a true "
             "label | ECE (points) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, groups in section["curves"].items():
        for group, q in groups.items():
            lines.append(f"| {name} | {group} ({q['labels']}) | {100 * q['f1_at_0.5']:.1f} | "
                         f"{100 * q['precision']:.1f} | {100 * q['recall']:.1f} | "
                         f"{q['mean_p_true']:.2f} | {100 * q['ece']:.1f} |")
    return lines + [""]


def variants_markdown(section: dict) -> list[str]:
    lines = [f"## Precision variants of `{section['artifact']}`: {section['dataset']}, "
             f"{section['images']} images", "",
             f"Command: `{section['command']}`. Each visual graph of the artifact, the fp32 "
             f"text graph; change = variant − fp32 in mAP points, [paired 95 % bootstrap "
             f"interval, {section['bootstrap_samples']} resamples of test images]; top-5 = "
             f"share of images whose top-5 labels (of 20) are fp32's. Gate for "
             f"`ML2P_PRECISION=auto`: {section['gate_rule']}.", "",
             "| variant | ZSL mAP | ZSL change | GZSL mAP | GZSL change | top-5 identical | "
             "gate |", "|---|---:|---|---:|---|---:|---|"]
    for variant, e in section["results"].items():
        verdict = "reference" if variant == "fp32" else (
            "passed" if e["gate"]["passed"] else "failed: " + "; ".join(e["gate"]["failed"]))
        lines.append(f"| {variant} | {e['zsl_map']} | {e['zsl_change']:+.2f} "
                     f"[{e['zsl_change_ci95'][0]:+.2f}, {e['zsl_change_ci95'][1]:+.2f}] | "
                     f"{e['gzsl_map']} | {e['gzsl_change']:+.2f} [{e['gzsl_change_ci95'][0]:+.2f}"
                     f", {e['gzsl_change_ci95'][1]:+.2f}] | {e['top5_identical']:.1%} | "
                     f"{verdict} |")
    return lines + [""]


BOOTSTRAP_CAVEAT = (
    "Where labels have few positive test images and rankings are near random (EmojiTags: a "
    "median of 6 positives per unseen keyword), the resampled mAPs sit above the estimate (AP "
    "is not an average over images; a label's AP over a resample that repeats or leaves out "
    "some of its few positives is skewed upward), so the interval can miss the estimate; "
    "compare methods there by the paired ML2P − ConSE interval, which shares that bias.")


def markdown_table(report: dict) -> str:
    if "datasets" not in report:  # only the variants section so far
        return "\n".join(["# Zero-shot accuracy", "", *variants_markdown(report["variants"]),
                          *probability_markdown(report.get("probabilities"))])
    lines = ["# Zero-shot accuracy", "",
             f"Command: `{report['command']}` ({report['created']}). "
             f"Inclusion: {report['inclusion_rule']}. mAP, F1@3, F1@5 in %; ML2P is the mean of "
             f"{len(report['checkpoints'])} seed(s), [95 % bootstrap interval of mAP, "
             f"{report['bootstrap_samples']} resamples of test images]. " + BOOTSTRAP_CAVEAT, ""]
    for name, entry in report["datasets"].items():
        lines += dataset_header(name, entry)
        lines += [method_row(m, v) for m, v in entry["methods"].items()]
        if "ml2p_minus_conse_map_ci95" in entry:
            d = entry["ml2p_minus_conse_map_ci95"]
            lines += ["", f"ML2P − ConSE mAP, 95 % interval: ZSL [{100 * d['zsl'][0]:+.1f}, "
                          f"{100 * d['zsl'][1]:+.1f}], GZSL [{100 * d['gzsl'][0]:+.1f}, "
                          f"{100 * d['gzsl'][1]:+.1f}]"]
        lines.append("")
    if "variants" in report:
        lines += variants_markdown(report["variants"])
    lines += probability_markdown(report.get("probabilities"))
    return "\n".join(lines)


# ------------------------------------------------------------------ several methods, one table


def checkpoint_scores(checkpoints: list[Path], dataset: str,
                      splits: dict | None = None, embedders: dict | None = None
                      ) -> tuple[list[np.ndarray], SplitData]:
    """Test-split scores of each checkpoint (one per seed) of one method on `dataset`.

    `splits` / `embedders` are optional caches shared across methods (keyed by dataset and
    backbone / embedder kind), so every method sees the same test images and label vectors.
    """
    splits = {} if splits is None else splits
    embedders = {} if embedders is None else embedders
    out, split = [], None
    for path in checkpoints:
        tagger = load_checkpoint(path)
        backbone, kind = tagger.config["backbone"], tagger.config["embedder"]["kind"]
        if (dataset, backbone) not in splits:
            splits[dataset, backbone] = test_split(dataset, backbone)
        split = splits[dataset, backbone]
        if kind not in embedders:
            embedders[kind] = create_embedder(kind)
        if (kind, dataset) not in embedders:  # label texts embedded once per dataset
            embedders[kind, dataset] = embedders[kind].embed(split.label_names)
        raw = torch.from_numpy(embedders[kind, dataset])
        with torch.no_grad():
            vectors = tagger.transform_labels(raw)
        out.append(predict(tagger, split, vectors))
    if split is None:
        raise ValueError("no checkpoints given")
    return out, split


def evaluate_methods(methods: dict[str, list[Path]], datasets: list[str],
                     out: Path | None = None, bootstrap: int = 1000, random: bool = True,
                     reference: str = "ml2p", command: str | None = None) -> dict:
    """Every method's checkpoints (one per seed) on each dataset's test split, one table.

    Same protocol as `evaluate_checkpoints` (INCLUSION rule, seed mean). With `bootstrap`, each
    method's seed-mean mAP gets a 95 % interval over test images (the same resamples for every
    method) and, when `reference` is among the methods, so does its paired difference to each
    other method. Writes `out` (JSON) and `out.md` when `out` is given.
    """
    report: dict = {
        "command": command or "ml2p eval " + " ".join(sys.argv[2:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "methods": {m: [str(c) for c in ckpts] for m, ckpts in methods.items()},
        "inclusion_rule": INCLUSION_RULE,
        "bootstrap_samples": bootstrap,
        "datasets": {},
    }
    splits: dict = {}
    embedders: dict = {}
    for name in datasets:
        scores, split = {}, None
        for method, checkpoints in methods.items():
            scores[method], split = checkpoint_scores(list(checkpoints), name, splits, embedders)
        if random:
            scores = {"random": [random_scores(split, seed) for seed in range(10)], **scores}
        entry = {
            "dataset_version": dataset_version(name),
            "test_images": int(len(split.rows)),
            "labels": len(split.label_names),
            "unseen_labels": int((~split.seen).sum()),
            "methods": {m: summarise(s, split) for m, s in scores.items()},
        }
        if bootstrap:
            boot = {m: bootstrap_map(s, split, bootstrap) for m, s in scores.items()
                    if m != "random"}
            for m, (interval, _) in boot.items():
                for setting in ("zsl", "gzsl"):
                    entry["methods"][m][setting]["map_ci95"] = interval[setting]
            if reference in boot:
                entry["map_difference_ci95"] = {
                    f"{reference} - {m}": {
                        s: [float(np.percentile(d, q)) for q in (2.5, 97.5)]
                        for s in ("zsl", "gzsl")
                        for d in [np.array(boot[reference][1][s]) - np.array(boot[m][1][s])]}
                    for m in boot if m != reference}
        report["datasets"][name] = entry
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(methods_markdown(report))
    return report


INCLUSION_RULE = ("test images with at least one positive of the ranked label set (the unseen "
                  "labels for ZSL, all labels for GZSL); labels without a positive are skipped "
                  "in mAP; F1@K micro-averaged over those images")


def dataset_header(name: str, entry: dict) -> list[str]:
    """A dataset's heading and the table header (ZSL then GZSL × mAP / F1@3 / F1@5)."""
    version = f" v{entry['dataset_version']}" if entry.get("dataset_version") else ""
    return [f"## {name}{version}: {entry['test_images']} test images, {entry['labels']} labels "
            f"({entry['unseen_labels']} unseen)", "",
            "| method | ZSL mAP | ZSL F1@3 | ZSL F1@5 | GZSL mAP | GZSL F1@3 | GZSL F1@5 |",
            "|---|---|---|---|---|---|---|"]


def method_row(method: str, values: dict) -> str:
    """One Markdown row: ZSL then GZSL × mAP / F1@3 / F1@5 in %, mAP with its interval."""
    cells = []
    for setting in ("zsl", "gzsl"):
        for metric in METRICS:
            cell = f"{100 * values[setting][metric]:.1f}"
            if metric == "map" and "map_ci95" in values[setting]:
                lo, hi = values[setting]["map_ci95"]
                cell += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
            cells.append(cell)
    return f"| {method} | " + " | ".join(cells) + " |"


def methods_markdown(report: dict) -> str:
    seeds = {m: len(c) for m, c in report["methods"].items()}
    lines = ["# Zero-shot accuracy, several methods", "",
             f"Command: `{report['command']}` ({report['created']}). "
             f"Inclusion: {report['inclusion_rule']}. mAP, F1@3, F1@5 in %; each method is the "
             f"mean over its checkpoints (seeds: {seeds}), [95 % bootstrap interval of mAP, "
             f"{report['bootstrap_samples']} resamples of test images]. " + BOOTSTRAP_CAVEAT, ""]
    if "datasets" not in report:  # only the variants section so far
        return "\n".join(["# Zero-shot accuracy", "", *variants_markdown(report["variants"])])
    for name, entry in report["datasets"].items():
        lines += dataset_header(name, entry)
        lines += [method_row(m, v) for m, v in entry["methods"].items()]
        for pair, d in entry.get("map_difference_ci95", {}).items():
            lines.append(f"\n{pair} mAP, 95 % interval: ZSL [{100 * d['zsl'][0]:+.1f}, "
                         f"{100 * d['zsl'][1]:+.1f}], GZSL [{100 * d['gzsl'][0]:+.1f}, "
                         f"{100 * d['gzsl'][1]:+.1f}]")
        lines.append("")
    return "\n".join(lines)
