"""JPEG decoding as chosen by `ml2p bench decode`: the committed choice is the one in use, the
reduced-scale path keeps orientation and colour, and the choice rules reject what they should."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from artifact.imaging import DRAFT_RATIO, decode_image
from benchmarks.decode import faster_decoder, pillow_decode, recommend

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "decode.json"


def _photo(size=(640, 480)) -> Image.Image:
    """Quadrants of four colours, so a wrong rotation or flip shows."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[: h // 2, : w // 2] = (220, 30, 30)
    array[: h // 2, w // 2:] = (30, 220, 30)
    array[h // 2:, : w // 2] = (30, 30, 220)
    array[h // 2:, w // 2:] = (230, 230, 40)
    return Image.fromarray(array)


def _jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    buffer, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = orientation
    image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def test_the_committed_recommendation_is_the_draft_ratio_in_use():
    report = json.loads(RESULTS.read_text())
    assert report["recommendation"]["draft_ratio"] == DRAFT_RATIO
    assert report["faster_decoder"]["keep"] == "simplejpeg"  # what artifact.imaging decodes with


def test_a_640x480_jpeg_decodes_at_half_scale_never_below_the_input_size():
    decoded = decode_image(_jpeg(_photo()), target_size=224)
    assert decoded.size == (320, 240) and decoded.mode == "RGB"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_reduced_scale_path_applies_every_exif_orientation(orientation):
    """The stored picture is the upright one transposed by the inverse of `orientation`;
    decoding must give the upright picture back, as Pillow's full decode does."""
    data = _jpeg(_photo(), orientation)
    ours = np.asarray(decode_image(data, target_size=224), dtype=int)
    reference = pillow_decode(data, draft=None).resize(ours.shape[1::-1], Image.BILINEAR)
    assert ours.shape == np.asarray(reference).shape
    assert np.abs(ours - np.asarray(reference, dtype=int)).mean() < 6


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_to_rgb(mode):
    buffer = io.BytesIO()
    _photo().convert(mode).save(buffer, format="JPEG", quality=92)
    decoded = decode_image(buffer.getvalue(), target_size=224)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB")
    assert decoded.mode == "RGB" and min(decoded.size) >= 224
    small = np.asarray(expected.resize(decoded.size, Image.BILINEAR), dtype=int)
    assert np.abs(np.asarray(decoded, dtype=int) - small).mean() < 6


def _run(decode: str, p90: float, zsl: float, gzsl: float, ratio: float | None = None) -> dict:
    row = {"decode": decode, "short_side_over_input_p90": p90, "zsl_change": zsl,
           "gzsl_change": gzsl}
    return row | ({"draft_ratio": ratio} if ratio is not None else {})


def test_a_ratio_needs_its_served_change_and_a_forced_scale_as_small_within_the_limit():
    runs = [_run("scale 1/1", 1.67, 0, 0), _run("scale 1/2", 0.84, -0.2, 0.1),
            _run("scale 1/4", 0.42, -8, -7), _run("ratio 2", 1.67, 0, 0, 2.0),
            _run("ratio 1", 1.05, -0.2, 0.2, 1.0), _run("ratio 0.5", 0.63, -0.1, 0.1, 0.5)]
    # ratio 0.5 changed little as served, but nothing as small as 0.5 x input stayed close
    assert recommend(runs, 0.3) == {"draft_ratio": 1.0, "accepted_ratios": [2.0, 1.0],
                                    "backed_by": ["scale 1/2"]}
    runs[1]["gzsl_change"] = -0.3  # the limit is exclusive: 1/2 no longer backs ratio 1
    assert recommend(runs, 0.3)["draft_ratio"] == 2.0


def test_simplejpeg_is_kept_only_when_it_wins_beyond_the_spread_and_loses_nowhere():
    def rows(pillow: list[float], simple: list[float]) -> list[dict]:
        out = []
        for i, (p, s) in enumerate(zip(pillow, simple, strict=True)):
            common = {"size": f"{i}x{i}", "format": "JPEG", "bytes": i, "draft_ratio": 1.0}
            out += [common | {"decoder": "pillow", "median_ms": p, "iqr_ms": 0.2},
                    common | {"decoder": "simplejpeg", "median_ms": s, "iqr_ms": 0.2}]
        return out

    assert faster_decoder(rows([5.0, 9.0], [4.5, 9.1]), 1.0)["keep"] == "simplejpeg"
    assert faster_decoder(rows([5.0, 9.0], [4.9, 9.1]), 1.0)["keep"] == "pillow"  # noise only
    assert faster_decoder(rows([5.0, 9.0], [4.5, 9.5]), 1.0)["keep"] == "pillow"  # a loss
