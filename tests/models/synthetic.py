"""Synthetic cached features for training tests: images whose taps carry a per-label signal,
a deterministic fake label embedder, and a small TrainConfig per head (no downloads)."""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from models.train import SplitData, TrainConfig

LITE0 = ((40, 28), (112, 14), (320, 7))
LABELS = ["red thing", "blue thing", "green thing", "round thing", "goldfish", "tall thing"]
SEEN = np.array([True, True, True, True, False, False])


class FakeEmbedder:
    """Deterministic 384-d unit vectors per text (no model download in unit tests)."""

    dim = 384
    kind = "minilm"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def synthetic_split(name: str, n: int, seed: int) -> SplitData:
    """Images whose taps carry a per-label signal, so the ranking is learnable."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(LABELS))) < 0.35).astype(np.int8)
    targets[np.arange(n), rng.integers(0, len(LABELS), n)] = 1  # every image has a positive
    signal = rng.standard_normal((len(LABELS), 1, 1, 1)).astype(np.float32)
    taps = []
    for channels, size in LITE0:
        codes = rng.standard_normal((len(LABELS), channels, 1, 1)).astype(np.float32)
        noise = 0.5 * rng.standard_normal((n, channels, size, size)).astype(np.float32)
        tap = noise + np.einsum("nl,lchw->nchw", targets.astype(np.float32), codes * signal)
        taps.append(tap.astype(np.float16))
    logits = rng.standard_normal((n, 1000)).astype(np.float32)
    cache = argparse.Namespace(taps=tuple(taps), logits=logits, valid=np.ones(n, bool))
    return SplitData(name, cache, np.arange(n), targets, list(LABELS), SEEN.copy())


def config_for(head: str, **changes) -> TrainConfig:
    model = {"name": f"{head}-test", "backbone": "efficientnet_lite0", "head": head,
             "head_kwargs": {}, "embedder": {"kind": "minilm"}, "dim": 32,
             "label_projection": True}
    if head == "ml2p":
        model["head_kwargs"] = {"groups": 3, "widths": [16, 16, 32]}
    base = {"model": model, "datasets": ("synthetic",), "eval_datasets": ("synthetic",),
            "epochs": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "distill_weight": 0.1}
    return TrainConfig(**{**base, **changes})
