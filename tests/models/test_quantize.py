"""The int8 graph: chosen on the validation split by the gate's own criteria, and rebuilt from
the committed ranges file alone (no dataset), byte for byte the graph whose accuracy was
measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from models.quantize import MAX_MAP_CHANGE, quantize_from_file, select

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "zoo" / "default"
RANGES = REPO / "models" / "weights" / "default.int8.json"


def _row(name: str, zsl: float, gzsl: float, top5: float) -> dict:
    return {"method": name, "exclusion": "none", "zsl_change": zsl, "gzsl_change": gzsl,
            "top5_identical": top5}


def test_selection_takes_the_most_top5_agreement_within_the_map_limit():
    rows = [_row("close", -0.1, 0.0, 0.80), _row("agreeing", 0.4, -0.3, 0.88),
            _row("off", -0.9, 0.1, 0.95)]
    assert select(rows)["method"] == "agreeing"  # "off" agrees more but moves mAP too much
    far = [_row("a", -0.9, 0.1, 0.95), _row("b", 0.7, 0.6, 0.90)]
    assert all(max(abs(r["zsl_change"]), abs(r["gzsl_change"])) > MAX_MAP_CHANGE for r in far)
    assert select(far)["method"] == "b"  # none within: the smallest worst-case change


@pytest.mark.skipif(not (DEFAULT / "visual.int8.onnx").is_file(), reason="needs `make model`")
def test_the_int8_graph_rebuilds_from_the_committed_ranges_without_the_dataset(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ML2P_VOC_ROOT", str(tmp_path / "no-dataset-here"))
    rebuilt = tmp_path / "visual.int8.onnx"
    spec = quantize_from_file(DEFAULT / "visual.onnx", rebuilt, RANGES)
    digest = hashlib.sha256(rebuilt.read_bytes()).hexdigest()
    assert digest == hashlib.sha256((DEFAULT / "visual.int8.onnx").read_bytes()).hexdigest()
    manifest = json.loads((DEFAULT / "manifest.json").read_text())
    assert manifest["variants"]["int8"]["accuracy"]["sha256"] == digest  # the measured file
    assert spec["calibration"]["split"] == "train"
