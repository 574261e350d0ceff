"""Tagger: build from a config, encode, score, checkpoint round trip (fp32 and fp16)."""

import numpy as np
import pytest
import torch

from models.tagger import build_tagger, load_checkpoint, save_checkpoint

CONFIG = {
    "name": "test-lite0",
    "backbone": "efficientnet_lite0",
    "head": "ml2p",
    "head_kwargs": {"groups": 3, "widths": [16, 16, 32], "residual": False},
    "embedder": {"kind": "minilm"},
    "embed_dim": 384,
    "dim": 32,
    "label_projection": True,
}


def lite0_taps(b: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.randn(b, 40, 28, 28), torch.randn(b, 112, 14, 14), torch.randn(b, 320, 7, 7))


def test_build_encode_score():
    tagger = build_tagger(CONFIG).eval()
    assert tagger.backbone is None  # built lazily, never for cached-feature training
    assert tagger.config["embedder"]["kind"] == "minilm" and tagger.config["input_size"] == 224
    raw = torch.nn.functional.normalize(torch.randn(6, 384), dim=1)
    labels = tagger.transform_labels(raw)
    assert labels.shape == (6, 32)
    with torch.no_grad():
        out = tagger.encode_from_taps(lite0_taps(), None)
    assert out.shape == (2, 3, 32)
    assert tagger.score(out, labels).shape == (2, 6)


def test_encode_images_uses_frozen_backbone():
    tagger = build_tagger(CONFIG)
    x = torch.randn(1, 3, 224, 224)
    tagger.train()
    out = tagger.encode_images(x)
    assert out.shape == (1, 3, 32)
    assert not tagger.backbone.training  # frozen backbone keeps ImageNet BN statistics
    assert not any(p.requires_grad for p in tagger.backbone.parameters())
    tagger.eval()
    with torch.no_grad():
        torch.testing.assert_close(tagger.encode_images(x),
                                   tagger.encode_from_taps(tagger.backbone(x)))


@pytest.mark.parametrize("half", [False, True])
def test_checkpoint_round_trip(tmp_path, half):
    tagger = build_tagger(CONFIG).eval()
    tagger.label_transform.fit_mean(np.random.default_rng(0).normal(size=(10, 384)))
    path = save_checkpoint(tagger, tmp_path / "model.pt", history=[{"epoch": 1, "loss": 0.5}],
                           provenance={"seed": 0}, half=half)
    payload = torch.load(path, weights_only=True)
    assert set(payload) >= {"config", "head", "label_transform", "history", "provenance"}
    assert not any(k.startswith("backbone") for k in payload["head"])
    loaded = load_checkpoint(path)
    assert loaded.history == [{"epoch": 1, "loss": 0.5}] and loaded.provenance == {"seed": 0}
    taps = lite0_taps(1)
    raw = torch.nn.functional.normalize(torch.randn(4, 384), dim=1)
    with torch.no_grad():
        a = tagger.score(tagger.encode_from_taps(taps), tagger.transform_labels(raw))
        b = loaded.score(loaded.encode_from_taps(taps), loaded.transform_labels(raw))
    tol = 2e-2 if half else 1e-6
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
