"""The frozen-backbone feature cache: contents, reuse, skipped images, concurrent builders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.features import backbone_onnx, build_feature_cache


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (64, 48), colour).save(path)
        paths.append(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    return [*paths, broken]


def test_cache_contents_reuse_and_concurrent_builders(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, images: list[Path]) -> None:
    monkeypatch.setenv("ML2P_CACHE_DIR", str(tmp_path / "cache"))
    backbone_onnx("efficientnet_lite0")  # torch's ONNX exporter is not thread-safe
    # two builders of the same cache at once (as `ml2p bench paper --jobs 2` runs them):
    # both get a complete cache, and only the finished directory is left
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: build_feature_cache("fixture-train", images), range(2))
    assert a.directory == b.directory
    assert [p.name for p in a.directory.parent.iterdir()] == [a.directory.name]
    assert a.valid.tolist() == [True, True, True, False]  # the broken file is skipped
    assert [t.shape[1:] for t in a.taps] == [(40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert a.logits.shape == (4, 1000)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    assert not np.allclose(a.logits[0], a.logits[1])  # different images, different outputs
    again = build_feature_cache("fixture-train", images)
    assert again.directory == a.directory
    assert again.directory.stat().st_mtime == a.directory.stat().st_mtime  # reused, not rebuilt
    # a file rewritten under the same name (a rebuilt dataset) is not served stale features
    Image.new("RGB", (64, 48), (30, 200, 30)).save(images[0])  # now the second image's picture
    rebuilt = build_feature_cache("fixture-train", images)
    assert rebuilt.directory != a.directory
    np.testing.assert_allclose(rebuilt.logits[0], rebuilt.logits[1], atol=1e-5)
