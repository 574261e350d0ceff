"""Trainer options of the shipped recipe: cosine output, ImageNet-evidence init, calibration
data, resume (synthetic features; the fixture comes from test_bench_paper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.heads.ml2p import ML2PHead
from models.train import Trainer
from tests.models.test_bench_paper import config_for, synthetic  # noqa: F401 - fixture

EVIDENCE = {"groups": 3, "widths": [16, 16, 32], "cosine_scale": 10.0,
            "imagenet_evidence_dim": 1000}


def evidence_config(**changes):  # noqa: ANN201
    config = config_for("ml2p", distill_weight=0.0, **changes)
    config.model["head_kwargs"] = dict(EVIDENCE)
    return config


def test_cosine_scale_fixes_group_norms() -> None:
    head = ML2PHead(backbone="efficientnet_lite0", groups=3, dim=16, widths=(8, 8, 8),
                    cosine_scale=10.0).eval()
    taps = (torch.randn(2, 40, 28, 28), torch.randn(2, 112, 14, 14), torch.randn(2, 320, 7, 7))
    out = head(taps)  # [B, G, D]
    assert torch.allclose(out.norm(dim=-1), torch.full((2, 3), 10.0), atol=1e-4)


@pytest.mark.parametrize("init", ["class_names", "class_names_all"])
def test_evidence_init_is_the_conse_prior(init: str, synthetic: None, tmp_path: Path) -> None:  # noqa: F811
    trainer = Trainer(evidence_config(evidence_init=init), tmp_path)
    weight = trainer.tagger.head.evidence.weight.detach()  # [D, 1000]
    with torch.no_grad():
        expected = trainer.tagger.transform_labels(trainer.raw_imagenet).T
    excluded = ~trainer.imagenet_keep
    assert excluded[1]  # "goldfish" is unseen in the fixture, ImageNet class 1 names it
    kept = ~excluded
    assert torch.allclose(weight[:, kept], expected[:, kept], atol=1e-6)
    if init == "class_names":  # strict: no unseen concept enters through the prior
        assert not weight[:, excluded].any()
    else:  # the information training-free ConSE uses
        assert torch.allclose(weight[:, excluded], expected[:, excluded], atol=1e-6)


def test_evidence_init_needs_an_evidence_head(synthetic: None, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="imagenet_evidence_dim"):
        Trainer(config_for("ml2p", evidence_init="class_names"), tmp_path)


def test_fit_writes_calibration_data_and_resumes(synthetic: None, tmp_path: Path) -> None:  # noqa: F811
    first = Trainer(evidence_config(epochs=2, evidence_init="class_names"), tmp_path).fit()
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    with np.load(tmp_path / "calibration.npz") as data:
        scores, targets = data["scores"], data["targets"]
    assert scores.shape == targets.shape and set(np.unique(targets)) == {0, 1}
    # a longer run in the same directory continues from epoch 2
    again = Trainer(evidence_config(epochs=3, evidence_init="class_names"), tmp_path).fit()
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    assert again["history"][:2] == first["history"]
