"""Static int8 (QDQ) quantization of the visual graph, chosen on data and rebuilt without it.

`ml2p quantize ARTIFACT` calibrates on `--images` VOC *train* images (the first of the train
split), tries every calibration method (min-max, percentile, entropy) with every node
exclusion in `EXCLUSIONS`, judges each on the validation split carved from train (paired ZSL /
GZSL mAP change against fp32, top-5 agreement) — never on images/val, the test set — and
writes the winner's method, exclusion and calibration ranges to one small JSON file
(`models/weights/default.int8.json`). The exporter quantizes from that file alone
(`make_int8(..., ranges=FILE)`), so `make model` and the container build need no dataset.

Quantization: QDQ, per-channel signed int8 weights, unsigned int8 activations (ONNX Runtime
`quantize_static`, its calibration cache as the ranges store).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from artifact.loader import VISUAL_INPUT
from models.provenance import git_commit

log = logging.getLogger("ml2p.quantize")
METHODS = ("minmax", "percentile", "entropy")
# node-name patterns kept in float32: nothing, the ML2P head, the head and the stem convolution
EXCLUSIONS: dict[str, str | None] = {
    "none": None,
    "head": r"^/head/",
    "head+stem": r"^/head/|^/_conv_stem/",
}
FORMAT = "ml2p-int8-ranges/1"


def _method(name: str):  # noqa: ANN202 - onnxruntime's CalibrationMethod
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def _reader(images: np.ndarray, batch: int = 8):  # noqa: ANN202 - a CalibrationDataReader
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator = iter(
                [{VISUAL_INPUT: images[i:i + batch]} for i in range(0, len(images), batch)])

        def get_next(self):  # noqa: ANN202
            return next(self._batches, None)

    return Reader()


def excluded_nodes(model_path: Path, exclusion: str) -> list[str]:
    """Names of the nodes `EXCLUSIONS[exclusion]` keeps in float32."""
    import onnx

    pattern = EXCLUSIONS[exclusion]
    if pattern is None:
        return []
    return [n.name for n in onnx.load(str(model_path)).graph.node if re.search(pattern, n.name)]


def quantize(src: Path, dst: Path, *, method: str, exclusion: str,
             ranges: dict | None = None, images: np.ndarray | None = None) -> dict:
    """Quantize `src` (fp32 visual graph) to `dst`; the ranges come from `ranges` (an ORT
    calibration-cache payload) or are computed on `images`. Returns the ranges used."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if ranges is None and images is None:
        raise ValueError("int8 quantization needs calibration ranges or calibration images")
    with tempfile.TemporaryDirectory(prefix="ml2p-int8-") as tmp:
        pre, cache = Path(tmp) / "pre.onnx", Path(tmp) / "ranges.json"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if ranges is not None:
            cache.write_text(json.dumps(ranges))
        quantize_static(str(pre), str(dst), _reader(images) if ranges is None else None,
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        nodes_to_exclude=excluded_nodes(pre, exclusion),
                        calibrate_method=_method(method), calibration_cache_path=str(cache))
        return json.loads(cache.read_text())


def quantize_from_file(src: Path, dst: Path, ranges_file: Path) -> dict:
    """Quantize with a committed ranges file (no data); returns its description."""
    spec = json.loads(Path(ranges_file).read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{ranges_file}: not an int8 ranges file ({FORMAT})")
    quantize(src, dst, method=spec["method"], exclusion=spec["exclusion"],
             ranges=spec["ranges"])
    return {k: spec[k] for k in ("method", "exclusion", "calibration")}


def describe(spec: dict) -> str:
    """One line for the manifest's variant `precision` field."""
    calibration = spec["calibration"]
    kept = "nothing" if spec["exclusion"] == "none" else spec["exclusion"]
    return (f"int8 QDQ (per-channel int8 weights, uint8 activations), {spec['method']} "
            f"calibration on {calibration['images']} VOC {calibration['split']} images, "
            f"float32 kept for: {kept}")


# the precision=auto gate's criteria, applied on the validation split
MAX_MAP_CHANGE = 0.5
SELECTION_RULE = (f"among the configurations whose ZSL and GZSL mAP changes against fp32 are "
                  f"both within {MAX_MAP_CHANGE} point, the most identical top-5 lists (then "
                  f"the smaller worst-case change); if none is within, the smallest worst-case "
                  f"change")


def select(rows: list[dict]) -> dict:
    """The configuration `SELECTION_RULE` picks from the validation rows."""
    def worst(row: dict) -> float:
        return max(abs(row["zsl_change"]), abs(row["gzsl_change"]))
    within = [r for r in rows if worst(r) <= MAX_MAP_CHANGE]
    if within:
        return max(within, key=lambda r: (r["top5_identical"], -worst(r)))
    return min(rows, key=worst)


def choose(artifact: Path, out: Path, n_images: int = 128, argv: list[str] | None = None) -> dict:
    """Try every method x exclusion; write the one `select` picks on the validation split
    (`SELECTION_RULE`) with its ranges to `out`."""
    from artifact.imaging import load_and_preprocess
    from models.data import load_dataset
    from models.export import graph_scores, label_vectors, top5_agreement
    from models.metrics import evaluate_zsl_gzsl

    started = time.perf_counter()
    fp32_path = artifact / "visual.onnx"
    train = load_dataset("voc2007", "train")
    val = load_dataset("voc2007", "val")
    calibration = np.stack([load_and_preprocess(str(p)) for p in train.image_paths[:n_images]])
    val_images = [load_and_preprocess(str(p)) for p in val.image_paths]  # once for every try
    labels = label_vectors(artifact, val.label_names)

    def evaluate(path: Path) -> tuple[dict, np.ndarray]:
        scores = graph_scores(path, val_images, labels)
        result = evaluate_zsl_gzsl(scores, val.targets, val.label_names, val.seen,
                                   include="positive")
        return {"zsl_map": 100 * result["zsl"]["map"],
                "gzsl_map": 100 * result["gzsl"]["map"]}, scores

    reference, reference_scores = evaluate(fp32_path)
    rows, payloads = [], {}
    with tempfile.TemporaryDirectory(prefix="ml2p-int8-search-") as tmp:
        for method in METHODS:
            for exclusion in EXCLUSIONS:
                path = Path(tmp) / f"{method}-{exclusion}.onnx"
                t0 = time.perf_counter()
                payloads[method, exclusion] = quantize(fp32_path, path, method=method,
                                                       exclusion=exclusion, images=calibration)
                got, scores = evaluate(path)
                row = {"method": method, "exclusion": exclusion,
                       "zsl_change": round(got["zsl_map"] - reference["zsl_map"], 2),
                       "gzsl_change": round(got["gzsl_map"] - reference["gzsl_map"], 2),
                       "top5_identical": round(top5_agreement(reference_scores, scores)
                                               ["top5_identical"], 3),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                log.info("int8 %s", row)
                print(f"int8 {row}", flush=True)
    best = select(rows)
    spec = {
        "format": FORMAT,
        "command": " ".join(["ml2p quantize", *(argv or [])]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(), "method": best["method"], "exclusion": best["exclusion"],
        "calibration": {"split": "train", "images": int(len(calibration)),
                        "which": f"the first {len(calibration)} of the VOC 2007 train split"},
        "selection": {"split": f"VOC 2007 val (carved from train, {len(val.image_paths)} "
                               "images)",
                      "rule": SELECTION_RULE,
                      "fp32": {k: round(v, 2) for k, v in reference.items()}, "tried": rows},
        "seconds": round(time.perf_counter() - started, 1),
        "ranges": payloads[best["method"], best["exclusion"]],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=1) + "\n")
    return spec
