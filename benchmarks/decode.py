"""`ml2p bench decode`: how JPEGs are decoded, chosen by speed and by accuracy.

Two parts, one run:
- **speed**: decode + preprocess per image (median and interquartile range of `--repeats`) for
  0.3 / 3 / 12 MP JPEG and MPO (textured images), with Pillow's draft mode (power-of-two
  scales) and with `artifact.imaging.decode_image` (simplejpeg: libjpeg-turbo's M/8 scales),
  each at draft ratio 2 (the decode before this benchmark) and at every candidate ratio;
- **accuracy**: VOC 2007 images/val (the test split), decoded at forced libjpeg scales 1/1
  (full size, today's decode of these 500 x 375 photos), 1/2 and 1/4, then run through the
  model artifact: ZSL and GZSL mAP per scale and the paired change against 1/1.

A draft ratio r decodes at the smallest scale whose sides stay >= r x the input size, so
its worst case is a short side of r x input. A ratio is **accepted** when a forced scale whose
short sides were at most r x input (90th percentile over the images) changed neither mAP by
`--max-map-change` points or more; the smallest accepted ratio is the recommendation
(`artifact.imaging.DRAFT_RATIO` is set from it by hand, and a test checks the two agree).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from artifact.imaging import JPEG_FAMILY, Preprocessing, decode_image, preprocess, to_rgb
from benchmarks import command_main, report_header, write_report

REPO = Path(__file__).resolve().parents[1]
RATIOS = (2.0, 1.0, 0.5)  # draft ratios timed and judged (2.0 = the decode before)
SCALES = (1, 2, 4)  # forced libjpeg scale denominators for the accuracy part
SIZES = (("0.3", (640, 480)), ("3", (2000, 1500)), ("12", (4000, 3000)))


def pillow_decode(data: bytes, draft: tuple[int, int] | None) -> Image.Image:
    """Pillow for every format: the JPEG family in draft mode at the largest power-of-two
    scale that keeps `draft` (w, h) pixels, then EXIF orientation and RGB."""
    image = Image.open(io.BytesIO(data))
    if draft is not None and image.format in JPEG_FAMILY:
        image.draft("RGB", draft)
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def _ratio_side(size: int, ratio: float) -> tuple[int, int]:
    side = max(1, round(ratio * size))
    return side, side


def _forced(data: bytes, scale: int) -> Image.Image:
    """Decode at libjpeg scale 1/`scale` exactly."""
    width, height = Image.open(io.BytesIO(data)).size
    return pillow_decode(data, (width // scale, height // scale))


def textured(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A photo-sized test picture with texture (random colours upsampled 8x), so it
    compresses and decodes like a busy photo, not a flat one."""
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def encoded(image: Image.Image, fmt: str) -> bytes:
    """`image` saved as JPEG / MPO (quality 90) or PNG; checked to open as that format."""
    options = {"JPEG": {"quality": 90}, "PNG": {},
               # two pictures, as a phone writes them (one frame is saved as JPEG)
               "MPO": {"quality": 90, "save_all": True, "append_images": [image]}}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options[fmt])
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == fmt
    return data


def _stats(seconds: list[float]) -> dict:
    q1, median, q3 = np.percentile(np.asarray(seconds) * 1000.0, [25, 50, 75])
    return {"median_ms": round(float(median), 2), "iqr_ms": round(float(q3 - q1), 2)}


def speed(size: int, repeats: int) -> list[dict]:
    """Per image size and format, per decoder and draft ratio: decode + preprocess time.
    The decoders take turns inside each repeat, so a noisy moment hits them all alike."""
    spec = Preprocessing(size=size)
    decoders = {"pillow": lambda data, r: pillow_decode(data, _ratio_side(size, r)),
                "simplejpeg": lambda data, r: decode_image(data, target_size=size, draft_ratio=r)}
    rng = np.random.default_rng(0)
    rows = []
    for mp, (w, h) in SIZES:
        image = textured(w, h, rng)
        for fmt in ("JPEG", "MPO"):
            data = encoded(image, fmt)
            runs = {(d, r): [] for d in decoders for r in RATIOS}
            shapes = {}
            for _ in range(repeats):
                for (name, ratio), took in runs.items():
                    t0 = time.perf_counter()
                    decoded = decoders[name](data, ratio)
                    preprocess(decoded, spec)
                    took.append(time.perf_counter() - t0)
                    shapes[(name, ratio)] = decoded.size
            for (name, ratio), took in runs.items():
                rows.append({"megapixels": mp, "size": f"{w}x{h}", "format": fmt,
                             "bytes": len(data), "decoder": name, "draft_ratio": ratio,
                             "decoded": "x".join(map(str, shapes[(name, ratio)])),
                             **_stats(took)})
                print(f"speed {rows[-1]}", flush=True)
    return rows


def accuracy(model: Path, scales: tuple[int, ...] = SCALES,
             ratios: tuple[float, ...] = RATIOS) -> dict:
    """VOC images/val mAP (ZSL / GZSL) of `model` per forced decode scale and per draft ratio
    as served (`decode_image`); changes are paired, against full-size decoding."""
    from artifact.loader import load_artifact
    from models.data import load_dataset
    from models.metrics import evaluate_zsl_gzsl
    from service.pipeline.scoring import score
    from service.runtime import create_engine
    from service.settings import Settings

    artifact = load_artifact(model)
    engine = create_engine(Settings(model=model), artifact)
    spec = artifact.preprocessing
    data = load_dataset("voc2007", "test")
    labels = engine.encode_labels(list(data.label_names))
    files = [Path(p).read_bytes() for p in data.image_paths]

    def evaluate(decode) -> dict:
        short_ratios, scores = [], []
        for start in range(0, len(files), 32):
            images = [decode(b) for b in files[start:start + 32]]
            short_ratios += [min(im.size) / spec.size for im in images]
            batch = np.stack([preprocess(im, spec) for im in images])
            scores.append(score(engine.encode_images(batch), labels))
        result = evaluate_zsl_gzsl(np.concatenate(scores), data.targets, data.label_names,
                                   data.seen, include="positive")
        p10, median, p90 = np.percentile(short_ratios, [10, 50, 90])
        return {"short_side_over_input_p10": round(float(p10), 3),
                "short_side_over_input_median": round(float(median), 3),
                "short_side_over_input_p90": round(float(p90), 3),
                "zsl_map": round(100 * result["zsl"]["map"], 2),
                "gzsl_map": round(100 * result["gzsl"]["map"], 2)}

    runs = [{"decode": f"scale 1/{k}", **evaluate(lambda b, k=k: _forced(b, k))}
            for k in scales]
    runs += [{"decode": f"draft ratio {r:g}", "draft_ratio": r,
              **evaluate(lambda b, r=r: decode_image(b, target_size=spec.size, draft_ratio=r))}
             for r in ratios]
    engine.close()
    for row in runs:
        row["zsl_change"] = round(row["zsl_map"] - runs[0]["zsl_map"], 2)
        row["gzsl_change"] = round(row["gzsl_map"] - runs[0]["gzsl_map"], 2)
        print(f"accuracy {row}", flush=True)
    return {"images": len(files), "labels": len(data.label_names),
            "unseen": [n for n, s in zip(data.label_names, data.seen, strict=True) if not s],
            "runs": runs}


def _within(run: dict, max_change: float) -> bool:
    return abs(run["zsl_change"]) < max_change and abs(run["gzsl_change"]) < max_change


def recommend(runs: list[dict], max_change: float) -> dict:
    """The smallest draft ratio r that (a) as served changes neither VOC mAP by `max_change`
    points or more, and (b) is backed at its worst case: a forced scale that decoded VOC no
    larger than r x input (90th percentile of the short sides) stayed within it too, since
    VOC's 500 x 375 photos are rarely reduced by the served rule itself."""
    forced = [r for r in runs if "draft_ratio" not in r and _within(r, max_change)]
    accepted, backing = [], {}
    for run in (r for r in runs if "draft_ratio" in r):
        ratio = run["draft_ratio"]
        backers = [f["decode"] for f in forced if f["short_side_over_input_p90"] <= ratio]
        if _within(run, max_change) and backers:
            accepted.append(ratio)
            backing[str(ratio)] = backers
    ratio = min(accepted, default=max(RATIOS))
    return {"draft_ratio": ratio, "accepted_ratios": accepted,
            "backed_by": backing.get(str(ratio), [])}


def faster_decoder(rows: list[dict], ratio: float) -> dict:
    """At `ratio`, per image: the median difference simplejpeg - Pillow and whether it is
    beyond the spread (the larger IQR). simplejpeg is worth its extra decode path only if it
    wins beyond the spread somewhere and loses nowhere."""
    by = {(r["decoder"], r["size"], r["format"]): r for r in rows if r["draft_ratio"] == ratio}
    images = sorted({(size, fmt) for _, size, fmt in by}, key=lambda k: by["pillow", *k]["bytes"])
    diffs = []
    for size, fmt in images:
        pil, sj = by["pillow", size, fmt], by["simplejpeg", size, fmt]
        delta = round(sj["median_ms"] - pil["median_ms"], 2)
        diffs.append({"size": size, "format": fmt, "simplejpeg_minus_pillow_ms": delta,
                      "spread_ms": max(pil["iqr_ms"], sj["iqr_ms"]),
                      "beyond_spread": abs(delta) > max(pil["iqr_ms"], sj["iqr_ms"])})
    wins = [d for d in diffs if d["beyond_spread"] and d["simplejpeg_minus_pillow_ms"] < 0]
    losses = [d for d in diffs if d["beyond_spread"] and d["simplejpeg_minus_pillow_ms"] > 0]
    keep = "simplejpeg" if wins and not losses else "pillow"
    return {"draft_ratio": ratio, "per_image": diffs, "keep": keep}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench decode`."""
    parser.add_argument("--model", default=str(REPO / "models" / "zoo" / "default"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--max-map-change", type=float, default=0.3,
                        help="mAP points a reduced decode may change ZSL or GZSL by")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode.json"))


def run(args: argparse.Namespace) -> int:
    from artifact.imaging import DRAFT_RATIO
    from artifact.loader import load_artifact

    started = time.perf_counter()
    model = Path(args.model)
    size = load_artifact(model).preprocessing.size
    acc = accuracy(model)
    choice = recommend(acc["runs"], args.max_map_change)
    rows = speed(size, args.repeats)
    report = {
        **report_header("decode", args.argv, model), "input_size": size,
        "max_map_change": args.max_map_change, "accuracy": acc, "recommendation": choice,
        "draft_ratio_in_use": DRAFT_RATIO, "speed": rows,
        "faster_decoder": faster_decoder(rows, choice["draft_ratio"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    acc, choice = report["accuracy"], report["recommendation"]
    lines = [
        f"# JPEG decoding: speed and accuracy ({report['created']})", "",
        f"Command: `{report['command']}`. Model `{report['model']}` (input "
        f"{report['input_size']} px), {report['machine']['cpus']} CPUs "
        f"({report['machine']['platform']}, Python {report['machine']['python']}), whole run "
        f"{report['seconds']} s.", "",
        f"## Accuracy: VOC 2007 images/val, {acc['images']} images, {acc['labels']} labels "
        f"({len(acc['unseen'])} unseen: {', '.join(acc['unseen'])})", "",
        "Each image decoded at a forced libjpeg scale, or by the served rule at a draft ratio "
        "(the smallest scale whose sides stay >= ratio x input), then the usual preprocessing "
        "and the model; change = mAP points against scale 1/1 (full size), paired (the same "
        "images).", "",
        "| decode | short side / input (p10 / median / p90) | ZSL mAP | change | GZSL mAP | "
        "change |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {s['decode']} | {s['short_side_over_input_p10']} / "
              f"{s['short_side_over_input_median']} / {s['short_side_over_input_p90']} | "
              f"{s['zsl_map']} | {s['zsl_change']:+.2f} | {s['gzsl_map']} | "
              f"{s['gzsl_change']:+.2f} |" for s in acc["runs"]]
    lines += ["", f"Draft ratios accepted (as served, and backed by a forced scale as small as "
              f"their worst case, each within {report['max_map_change']} mAP points): "
              f"{', '.join(map(str, choice['accepted_ratios'])) or 'none'}; recommended "
              f"**{choice['draft_ratio']}** (backed by {', '.join(choice['backed_by'])}); "
              f"`artifact.imaging.DRAFT_RATIO` is {report['draft_ratio_in_use']}.", "",
              "## Speed: decode + preprocess per image (median, IQR in brackets)", "",
              "| MP | size | format | bytes | decoder | draft ratio | decoded | ms |",
              "|---:|---|---|---:|---|---:|---|---:|"]
    lines += [f"| {r['megapixels']} | {r['size']} | {r['format']} | {r['bytes']} | "
              f"{r['decoder']} | {r['draft_ratio']} | {r['decoded']} | {r['median_ms']} "
              f"[{r['iqr_ms']}] |" for r in report["speed"]]
    fast = report["faster_decoder"]
    lines += ["", f"simplejpeg - Pillow at draft ratio {fast['draft_ratio']}, median ms "
              "(beyond the spread = larger than the larger IQR): "
              + "; ".join(f"{d['size']} {d['format']} {d['simplejpeg_minus_pillow_ms']:+.2f}"
                          f"{' (beyond)' if d['beyond_spread'] else ''}"
                          for d in fast["per_image"])
              + f". Kept: **{fast['keep']}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("decode", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
