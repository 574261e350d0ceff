"""`ml2p bench explain`: how good the relevance maps are, and what they cost.

1. **Pointing game** on VOC images/val (the test split; boxes from its COCO-format
   annotations): for every (image, class with a box in it) pair, a hit when the centre of the
   map's maximum cell falls inside a box of that class. The grid covers the whole image (the
   preprocessing squashes it to the input size), so positions are compared as fractions of
   the width and height; boxes of a VOC id exported twice are pooled. The baseline points at
   the image's centre. Seen (16) and unseen (4: car, dog, sofa, train) classes apart, for each
   precision variant's map graph; 95 % intervals by bootstrap over images (`--resamples`), of
   the accuracy and of its paired difference to the baseline. The maps are computed by the
   server's own code (`service.pipeline.explain.relevance`) from the artifact's graphs.
   A diagnostic beside it (not what the server returns): each map minus the class's mean map
   over the first `--prior-images` VOC *train* images, i.e. with the model's position prior
   (the same cells favoured whatever the photo) taken out.
2. **Cost**: two servers with default settings on the same artifact, one as built and one on a
   copy without the map graphs (the other files linked), taking turns for `--rounds` rounds:
   REST throughput at c = 16 and p50 at c = 1 with explain=false (20 labels), and, on the one
   with maps, p50 at c = 1 of requests with maps for 5 tags; the compared points run back to
   back within a round, and each ratio is the median of its per-round values (the machine's
   other load drifts over minutes, the pairs share it).
3. A PNG grid of a few VOC examples (each image's best-scored class present, its map over the
   squashed photo, the class's boxes, the map's maximum) to `--examples` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks import (
    command_main,
    loadgen,
    report_header,
    serve_bench,
    serve_compare,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
GOAL_OVERHEAD = 0.05  # explain=false within 5 % of the artifact without maps
GOAL_MAPS = 0.20  # maps for 5 tags add less than 20 % to a request's latency


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(REPO / "models" / "zoo" / "default"))
    parser.add_argument("--precisions", default="fp32,int8",
                        help="map graphs to judge (comma-separated variants of the artifact)")
    parser.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--prior-images", type=int, default=256,
                        help="VOC train images for the diagnostic's position prior")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load point")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-cost", action="store_true", help="the pointing game only")
    parser.add_argument("--examples", default=str(REPO / "benchmarks" / "results" /
                                                  "explain-examples"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "explain.json"))


# --- the pointing game ---------------------------------------------------------------------
def voc_boxes(dataset) -> list[dict[int, list[tuple[float, float, float, float]]]]:  # noqa: ANN001
    """Per test image, per class column: its boxes as (x0, y0, x1, y1) fractions of the image."""
    from models.data.base import resolve_root
    from models.data.voc2007 import DEFAULT_ROOT, ENV_ROOT, voc_classes, voc_id

    root = resolve_root(None, ENV_ROOT, DEFAULT_ROOT)
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    column = {c["voc"]: i for i, c in enumerate(voc_classes())}
    category = {c["id"]: column[c["name"]] for c in coco["categories"] if c["name"] in column}
    images = {im["id"]: im for im in coco["images"]}
    by_voc: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for ann in coco["annotations"]:
        if ann["category_id"] not in category:
            continue
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        width, height = image["width"], image["height"]
        by_voc[voc_id(image["file_name"])][category[ann["category_id"]]].append(
            (x / width, y / height, (x + w) / width, (y + h) / height))
    return [dict(by_voc[voc_id(p.name)]) for p in dataset.image_paths]


def peak(values: np.ndarray, rows: int, cols: int) -> tuple[float, float]:
    """The centre of a map's maximum cell, as (x, y) fractions of the image."""
    cell = int(np.argmax(values))
    return (cell % cols + 0.5) / cols, (cell // cols + 0.5) / rows


def inside(point: tuple[float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    x, y = point
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)


def explained(sess, images: np.ndarray, batch: int = 16):  # noqa: ANN001, ANN201
    """(index, groups, positions, evidence) of each image through a map graph's session."""
    for start in range(0, len(images), batch):
        outputs = sess.run(None, {"image": images[start:start + batch]})
        for offset, terms in enumerate(zip(*outputs, strict=True)):
            yield start + offset, *terms


def class_prior(sess, images: np.ndarray, labels: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """[classes, P]: each class's mean map over `images` (the diagnostic's position prior)."""
    from service.pipeline.explain import relevance

    total = 0.0
    for _, groups, positions, evidence in explained(sess, images):
        total = total + np.stack([relevance(groups, positions, evidence, w).values
                                  for w in labels])
    return total / len(images)


def point_all(sess, images: np.ndarray, labels: np.ndarray, targets: np.ndarray,  # noqa: ANN001
              boxes: list[dict], prior: np.ndarray) -> tuple[list[tuple], list[dict]]:
    """(image, class, map hit, centre hit, hit of the map less its prior) for every present
    class; and the map of each image's best-scored present class (for the examples)."""
    from service.pipeline.explain import relevance

    pairs, best = [], []
    for i, groups, positions, evidence in explained(sess, images):
        top = None
        for j in np.flatnonzero(targets[i]):
            rel = relevance(groups, positions, evidence, labels[j])
            score = float((groups @ labels[j]).max())
            pairs.append((i, int(j), inside(peak(rel.values, rel.rows, rel.cols), boxes[i][j]),
                          inside((0.5, 0.5), boxes[i][j]),
                          inside(peak(rel.values - prior[j], rel.rows, rel.cols), boxes[i][j])))
            if top is None or score > top["score"]:
                top = {"image": i, "class": int(j), "score": score, "map": rel}
        best.append(top)
    return pairs, best


def bootstrap(pairs: list[tuple], images: int, resamples: int, column: int = 2,
              seed: int = 0) -> dict:
    """Accuracy of the map (hits in `column` of the pairs) and of the centre, and their paired
    difference, with 95 % intervals from resampling images (a cluster bootstrap: an image's
    pairs move together)."""
    count, hits, centre = np.zeros(images), np.zeros(images), np.zeros(images)
    for pair in pairs:
        count[pair[0]] += 1
        hits[pair[0]] += pair[column]
        centre[pair[0]] += pair[3]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, images, (resamples, images))
    n = count[draws].sum(1)
    acc, base = hits[draws].sum(1) / n, centre[draws].sum(1) / n

    def interval(x: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]

    total = count.sum()
    return {"pairs": int(total), "images": int((count > 0).sum()),
            "accuracy": round(float(hits.sum() / total), 4), "accuracy_ci95": interval(acc),
            "centre": round(float(centre.sum() / total), 4), "centre_ci95": interval(base),
            "difference": round(float((hits.sum() - centre.sum()) / total), 4),
            "difference_ci95": interval(acc - base)}


def pointing_game(args: argparse.Namespace, model: Path) -> tuple[dict, list, list]:
    from artifact.imaging import load_and_preprocess
    from artifact.manifest import Manifest
    from models.data import load_dataset
    from models.export import label_vectors, session

    manifest = Manifest.model_validate_json((model / "manifest.json").read_text())
    if manifest.explain is None:
        raise SystemExit(f"{model} was exported without relevance maps")
    data = load_dataset("voc2007", "test")
    n = args.limit or len(data.image_paths)
    boxes = voc_boxes(data)[:n]
    targets = data.targets[:n]
    t0 = time.perf_counter()
    spec = manifest.preprocessing.build()
    images = np.stack([load_and_preprocess(str(p), spec) for p in data.image_paths[:n]])
    decode_s = time.perf_counter() - t0
    labels = label_vectors(model, data.label_names)
    trained = set(manifest.calibration.reference_labels) if manifest.calibration else set()
    seen = [bool(s) for s in data.seen]
    train = load_dataset("voc2007", "train").image_paths[:args.prior_images]
    prior_images = np.stack([load_and_preprocess(str(p), spec) for p in train])
    results, best = {}, []
    for precision in args.precisions.split(","):
        t0 = time.perf_counter()
        sess = session(model / manifest.explain.files[precision], threads=2)
        pairs, tops = point_all(sess, images, labels, targets, boxes,
                                class_prior(sess, prior_images, labels))
        best = best or tops
        results[precision] = {
            kind: bootstrap([p for p in pairs if seen[p[1]] == (kind == "seen")], n,
                            args.resamples)
            for kind in ("seen", "unseen")}
        results[precision] |= {
            f"{kind} less prior": bootstrap([p for p in pairs if seen[p[1]] == (kind == "seen")],
                                            n, args.resamples, column=4)
            for kind in ("seen", "unseen")}
        results[precision]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"pointing game {precision}: {json.dumps(results[precision])}", flush=True)
    return {"dataset": f"VOC 2007 images/val ({n} images after de-duplication)",
            "rule": "hit: the centre of the map's maximum cell lies inside a box of the class "
                    "(positions as fractions of the image: the grid covers the squashed image); "
                    "baseline: the image's centre; every (image, class with a box) pair",
            "grid": [manifest.explain.rows, manifest.explain.cols],
            "seen_labels": [name for name, s in zip(data.label_names, seen, strict=True) if s],
            "unseen_labels": [name for name, s in zip(data.label_names, seen, strict=True)
                              if not s],
            "unseen_not_trained_on": (not trained or not any(
                name in trained for name, s in zip(data.label_names, seen, strict=True)
                if not s)),
            "diagnostic": f"less prior: the map minus the class's mean map over the first "
                          f"{len(train)} VOC train images (not what the server returns)",
            "resamples": args.resamples, "decode_s": round(decode_s, 1),
            "precisions": results}, best, boxes


# --- cost ----------------------------------------------------------------------------------
def without_maps(model: Path, out: Path) -> Path:
    """A copy of the artifact without the map graphs: its other files linked, its manifest
    without `explain`."""
    out.mkdir(parents=True)
    manifest = json.loads((model / "manifest.json").read_text())
    maps = set((manifest.get("explain") or {}).get("files", {}).values())
    for path in model.iterdir():
        if path.name not in maps and path.name != "manifest.json":
            (out / path.name).symlink_to(path.resolve())
    manifest["explain"] = None
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


# the points of a round, each a (server, concurrency, explain) load; the ratios compare
# points of the same round (run back to back, so they share the machine's load at the time)
POINTS = {"with maps c=16": ("with maps", 16, False),
          "without maps c=16": ("without maps", 16, False),
          "with maps c=1": ("with maps", 1, False),
          "without maps c=1": ("without maps", 1, False),
          "with maps c=1 explain 5 tags": ("with maps", 1, True)}
RATIOS = {"throughput_c16": ("with maps c=16", "without maps c=16", "throughput_rps"),
          "p50_c1": ("with maps c=1", "without maps c=1", "p50_ms"),
          "explain_5_tags_p50_c1": ("with maps c=1 explain 5 tags", "with maps c=1", "p50_ms")}


def cost(args: argparse.Namespace, model: Path) -> dict:
    """The `POINTS` for `--rounds` rounds (every other round in reverse order, so neither
    server always goes first); per ratio, the median and range of its per-round values."""
    rows: dict[str, list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="ml2p-explain-") as tmp:
        plain = without_maps(model, Path(tmp) / "artifact-without-maps")
        servers = {}
        try:
            for name, artifact in (("with maps", model), ("without maps", plain)):
                work = Path(tmp) / name.replace(" ", "-")
                work.mkdir()
                servers[name] = serve_bench._start_server(artifact, work)
            for round_ in range(args.rounds):
                order = list(POINTS) if round_ % 2 == 0 else list(POINTS)[::-1]
                for point in order:
                    server, concurrency, explain = POINTS[point]
                    rows[point].append(loadgen.run_loadgen(
                        "rest", servers[server][1],
                        loadgen.Load(args.duration, 10**7, concurrency=concurrency),
                        fields={"explain": "true", "explain_top_k": "5"} if explain else None))
                print(f"round {round_ + 1}: " + ", ".join(
                    f"{k}: {v[-1]['throughput_rps']} req/s p50 {v[-1]['p50_ms']} ms"
                    for k, v in rows.items()), flush=True)
        finally:
            for proc, _, _ in servers.values():
                serve_compare._stop(proc)
    points = {k: {"throughput_rps": statistics.median(p["throughput_rps"] for p in v),
                  "throughput_range": [min(p["throughput_rps"] for p in v),
                                       max(p["throughput_rps"] for p in v)],
                  "p50_ms": statistics.median(p["p50_ms"] for p in v),
                  "p50_range": [min(p["p50_ms"] for p in v), max(p["p50_ms"] for p in v)],
                  "errors": sum(p["errors"] for p in v)}
              for k, v in rows.items()}
    ratios = {}
    for name, (top, bottom, key) in RATIOS.items():
        per_round = [a[key] / b[key] for a, b in zip(rows[top], rows[bottom], strict=True)]
        ratios[name] = {"median": round(statistics.median(per_round), 3),
                        "range": [round(min(per_round), 3), round(max(per_round), 3)],
                        "rounds": [round(r, 3) for r in per_round]}
    return {"labels": 20, "duration_s": args.duration, "rounds": args.rounds,
            "points": points, "ratios": ratios}


# --- examples ------------------------------------------------------------------------------
def examples(best: list[dict], data_paths: list[Path], boxes: list[dict], names: list[str],
             out: Path, count: int = 8, side: int = 224) -> Path:
    """A grid of `count` photos with their best class's map, boxes and peak (PNG)."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    grid = Image.new("RGB", (4 * side, ((count + 3) // 4) * (side + 16)), "white")
    for k, item in enumerate(best[:count]):
        rel = item["map"]
        photo = Image.open(data_paths[item["image"]]).convert("RGB").resize((side, side))
        values = rel.values.reshape(rel.rows, rel.cols)
        scaled = (values - values.min()) / max(float(np.ptp(values)), 1e-9)
        heat = Image.fromarray(np.uint8(scaled * 255)).resize((side, side), Image.BILINEAR)
        red = Image.merge("RGB", (heat, Image.new("L", heat.size, 0),
                                  Image.new("L", heat.size, 0)))
        tile = Image.blend(photo, red, 0.45)
        draw = ImageDraw.Draw(tile)
        for x0, y0, x1, y1 in boxes[item["image"]][item["class"]]:
            draw.rectangle((x0 * side, y0 * side, x1 * side, y1 * side), outline="yellow")
        x, y = peak(rel.values, rel.rows, rel.cols)
        draw.ellipse((x * side - 5, y * side - 5, x * side + 5, y * side + 5), outline="cyan",
                     width=2)
        left, top = (k % 4) * side, (k // 4) * (side + 16)
        grid.paste(tile, (left, top))
        ImageDraw.Draw(grid).text((left + 4, top + side + 2), names[item["class"]], fill="black")
    path = out / "pointing-examples.png"
    grid.save(path)
    return path


# --- report --------------------------------------------------------------------------------
def cost_goal(goal: str, ratio: dict, low: float = 0.0, high: float = float("inf")) -> dict:
    """A cost goal on a ratio (one-sided bound `low` or `high`): met / not met when every
    round's ratio is on the same side of the bound, else inconclusive (`met` None): the
    rounds straddle it, the machine's noise is larger than the effect looked for."""
    lo, hi = ratio["range"]
    inside_lo, inside_hi = low <= lo <= high, low <= hi <= high
    return {"goal": goal, "value": f"median {ratio['median']} (rounds {lo}-{hi})",
            "met": inside_lo if inside_lo == inside_hi else None}


def verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "inconclusive: the rounds' range straddles "
                                                "the bound"}[met]


def run(args: argparse.Namespace) -> int:
    from models.data import load_dataset

    model = Path(args.model)
    started = time.perf_counter()
    game, best, boxes = pointing_game(args, model)
    data = load_dataset("voc2007", "test")
    picture = examples(best, data.image_paths, boxes, data.label_names, Path(args.examples))
    print(f"examples: {picture}")
    costs = None if args.skip_cost else cost(args, model)
    goals = []
    for precision, result in game["precisions"].items():
        for kind in ("seen", "unseen"):
            r = result[kind]
            goals.append({"goal": f"{precision} {kind}: pointing accuracy above the centre "
                                  f"baseline, 95 % interval excluding it",
                          "value": f"{r['accuracy']:.3f} [{r['accuracy_ci95'][0]:.3f}, "
                                   f"{r['accuracy_ci95'][1]:.3f}] vs {r['centre']:.3f}",
                          "met": r["accuracy_ci95"][0] > r["centre"]
                          and r["difference_ci95"][0] > 0})
    if costs is not None:
        ratios = costs["ratios"]
        goals += [
            cost_goal("explain=false throughput at c=16 within 5 % of the artifact without maps",
                      ratios["throughput_c16"], low=1 - GOAL_OVERHEAD),
            cost_goal("explain=false p50 at c=1 within 5 % of the artifact without maps",
                      ratios["p50_c1"], high=1 + GOAL_OVERHEAD),
            cost_goal("maps for 5 tags add less than 20 % to a request's p50 at c=1",
                      ratios["explain_5_tags_p50_c1"], high=1 + GOAL_MAPS)]
    report = {**report_header("explain", args.argv, model), "pointing_game": game,
              "cost": costs, "goals": goals,
              "seconds": round(time.perf_counter() - started, 1)}
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    from models.card import pointing_table

    m, game = report["machine"], report["pointing_game"]
    lines = ["# Relevance maps: the pointing game and the cost", "",
             f"Command: `{report['command']}` ({report['created']}); model {report['model']}; "
             f"{m['cpus']} CPUs, {m['platform']}; {report['seconds']} s.", "",
             f"## Pointing game ({game['dataset']})", "",
             f"Rule: {game['rule']}. Grid {game['grid'][0]}×{game['grid'][1]}; unseen labels: "
             f"{', '.join(game['unseen_labels'])}; intervals from {game['resamples']} bootstrap "
             f"resamples of the images. Diagnostic rows ({game['diagnostic']}).", "",
             pointing_table(game), ""]
    costs = report["cost"]
    if costs is not None:
        lines += [f"## Cost (REST, {costs['labels']} labels, {costs['rounds']} rounds of "
                  f"{costs['duration_s']:g} s per point, medians [range])", "",
                  "| server, load | req/s | p50 ms | errors |", "|---|---:|---:|---:|"]
        for name, p in costs["points"].items():
            lines.append(f"| {name} | {p['throughput_rps']} [{p['throughput_range'][0]}, "
                         f"{p['throughput_range'][1]}] | {p['p50_ms']} [{p['p50_range'][0]}, "
                         f"{p['p50_range'][1]}] | {p['errors']} |")
        lines += ["", "Ratios of points run back to back in the same round (median of the "
                      "rounds [range]): " + ", ".join(
                          f"{k} {v['median']} [{v['range'][0]}, {v['range'][1]}]"
                          for k, v in costs["ratios"].items()), ""]
    lines += ["## Goals", ""] + [f"- {g['goal']}: {g['value']} — "
                                 f"{verdict(g['met'])}" for g in report["goals"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("explain", __doc__, add_arguments, run, argv)

