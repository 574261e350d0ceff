"""Frozen-backbone feature cache: taps + ImageNet logits computed once, memory-mapped on disk.

The backbone runs through ONNX Runtime (several times faster than eager torch on a small CPU).
Files live under the cache directory, keyed by backbone, preprocessing and the image list, so a
change to any of them builds a new cache instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.imaging import DRAFT_RATIO, ImageDecodeError, Preprocessing, load_and_preprocess
from artifact.manifest import PreprocessingSpec
from models.data.base import cache_root

log = logging.getLogger(__name__)

TAP_NAMES = ("tap8", "tap16", "tap32")


def backbone_onnx(backbone: str, size: int = 224) -> Path:
    """Export (once) the backbone's taps + ImageNet logits to ONNX and return the path."""
    path = cache_root() / "backbones" / f"{backbone}_{size}.onnx"
    if path.exists():
        return path
    import torch

    from models.backbones import create_backbone

    net = create_backbone(backbone).eval()

    class _All(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):  # noqa: ANN001, ANN202 - export wrapper
            return self.net.forward_all(x)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")  # concurrent exporters never collide
    torch.onnx.export(
        _All(), torch.zeros(1, 3, size, size), str(tmp),
        input_names=["image"], output_names=[*TAP_NAMES, "logits"],
        dynamic_axes={name: {0: "batch"} for name in ["image", *TAP_NAMES, "logits"]},
        opset_version=17, dynamo=False,
    )
    tmp.replace(path)
    return path


@dataclass
class FeatureCache:
    """Memory-mapped taps (fp16) and ImageNet logits (fp32) for one dataset split."""

    directory: Path
    taps: tuple[np.ndarray, np.ndarray, np.ndarray]  # each [N, C, H, W] float16
    logits: np.ndarray  # [N, 1000] float32
    valid: np.ndarray  # [N] bool: False where the image could not be decoded

    def __len__(self) -> int:
        return len(self.valid)


def _cache_key(backbone: str, spec: Preprocessing, paths: list[Path]) -> str:
    digest = hashlib.sha256()
    section = PreprocessingSpec.of(spec).model_dump()  # as the manifest records it
    # how JPEGs are decoded changes the pixels too (reduced-scale decoding)
    decoding = {"jpeg": "simplejpeg", "draft_ratio": DRAFT_RATIO}
    digest.update(json.dumps([backbone, section, decoding], sort_keys=True).encode())
    for path in paths:
        # a rebuilt dataset reuses file names (EmojiTags v2's test/ holds other scenes than
        # v1's): each file's size and modification time make rewritten files miss
        try:
            stat = Path(path).stat()
            identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:  # unreadable files are recorded as such by the cache build
            identity = f"{path}\0missing"
        digest.update(identity.encode())
    return digest.hexdigest()[:16]


def open_cache(directory: Path) -> FeatureCache:
    meta = json.loads((directory / "meta.json").read_text())
    taps = tuple(
        np.lib.format.open_memmap(directory / f"{name}.npy", mode="r") for name in TAP_NAMES
    )
    logits = np.load(directory / "logits.npy", mmap_mode="r")
    valid = np.load(directory / "valid.npy")
    assert len(valid) == meta["count"]
    return FeatureCache(directory, taps, logits, valid)  # type: ignore[arg-type]


def build_feature_cache(
    name: str,
    image_paths: list[Path],
    backbone: str = "efficientnet_lite0",
    spec: Preprocessing | None = None,
    batch_size: int = 32,
    threads: int | None = None,
) -> FeatureCache:
    """Compute (or reuse) the cached backbone outputs for `image_paths`, in order."""
    spec = spec or Preprocessing()
    key = _cache_key(backbone, spec, image_paths)
    directory = cache_root() / "features" / f"{name}-{backbone}-{key}"
    if (directory / "meta.json").exists():
        return open_cache(directory)
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(backbone_onnx(backbone, spec.size)), options, providers=["CPUExecutionProvider"]
    )
    probe = session.run(None, {"image": np.zeros((1, 3, spec.size, spec.size), np.float32)})
    # built under a private name and renamed into place when complete, so that processes
    # building the same cache at once (bench paper --jobs) never read a half-written one
    final, directory = directory, directory.with_name(
        f"{directory.name}.tmp{os.getpid()}-{threading.get_ident()}")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    count = len(image_paths)
    taps = [
        np.lib.format.open_memmap(
            directory / f"{tap}.npy", mode="w+", dtype=np.float16, shape=(count, *out.shape[1:])
        )
        for tap, out in zip(TAP_NAMES, probe[:3], strict=True)
    ]
    logits = np.lib.format.open_memmap(
        directory / "logits.npy", mode="w+", dtype=np.float32, shape=(count, probe[3].shape[1])
    )
    valid = np.ones(count, dtype=bool)

    def load(index: int) -> np.ndarray | None:
        try:
            return load_and_preprocess(str(image_paths[index]), spec)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", image_paths[index], exc)
            return None

    started = time.perf_counter()
    blank = np.zeros((3, spec.size, spec.size), np.float32)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, count, batch_size):
            indices = range(start, min(start + batch_size, count))
            images = list(pool.map(load, indices))
            for index, image in zip(indices, images, strict=True):
                valid[index] = image is not None
            batch = np.stack([blank if image is None else image for image in images])
            outputs = session.run(None, {"image": batch})
            for store, out in zip(taps, outputs[:3], strict=True):
                store[start : start + len(indices)] = out.astype(np.float16)
            logits[start : start + len(indices)] = outputs[3]
    for store in (*taps, logits):
        store.flush()
    np.save(directory / "valid.npy", valid)
    skipped = int((~valid).sum())
    elapsed = time.perf_counter() - started
    (directory / "meta.json").write_text(
        json.dumps(
            {"name": name, "backbone": backbone, "count": count, "skipped": skipped,
             "seconds": round(elapsed, 1),
             "preprocessing": PreprocessingSpec.of(spec).model_dump()},
            indent=1,
        )
    )
    try:
        directory.rename(final)
    except OSError:  # another process finished the same cache first: keep theirs
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(directory)
    log.info("feature cache %s: %d images (%d skipped) in %.0fs", name, count, skipped, elapsed)
    return open_cache(final)
