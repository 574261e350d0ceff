"""Trainer options of the shipped recipe: cosine output, ImageNet-evidence init, calibration
data, resume (synthetic features: tests/models/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.heads.ml2p import ML2PHead
from models.train import Trainer
from tests.models.synthetic import config_for

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
def test_evidence_init_is_the_conse_prior(init: str, synthetic: None, tmp_path: Path) -> None:
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


def test_evidence_init_needs_an_evidence_head(synthetic: None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="imagenet_evidence_dim"):
        Trainer(config_for("ml2p", evidence_init="class_names"), tmp_path)


def test_fit_writes_calibration_data_and_resumes(synthetic: None, tmp_path: Path) -> None:
    first = Trainer(evidence_config(epochs=2, evidence_init="class_names"), tmp_path).fit()
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    with np.load(tmp_path / "calibration.npz") as data:
        scores, targets = data["scores"], data["targets"]
    assert scores.shape == targets.shape and set(np.unique(targets)) == {0, 1}
    # one optimizer group, the layout of train states written before end-to-end training
    # existed (a second, empty group made them fail to resume)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert len(state["optimizer"]["param_groups"]) == 1
    # a longer run in the same directory continues from epoch 2
    again = Trainer(evidence_config(epochs=3, evidence_init="class_names"), tmp_path).fit()
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    assert again["history"][:2] == first["history"]


@pytest.fixture
def image_splits(synthetic: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The synthetic splits with real PNG files behind their rows (train 8, val 4)."""
    import models.train as train_module
    from tests.models.synthetic import synthetic_split

    def load_split(dataset: str, split: str, backbone: str, limit=None, seed: int = 0):  # noqa: ANN001
        data = synthetic_split(dataset, 8 if split == "train" else 4, 0 if split == "train" else 1)
        rng = np.random.default_rng(len(split))
        folder = tmp_path / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for row, label_row in enumerate(data.targets):
            colour = (rng.random(3) * 255 * (0.3 + 0.7 * label_row[:3])).astype(np.uint8)
            pixels = np.broadcast_to(colour, (96, 128, 3)).copy()
            Image.fromarray(pixels).save(folder / f"{row}.png")
            data.paths.append(folder / f"{row}.png")
        return data

    monkeypatch.setattr(train_module, "load_split", load_split)


def test_finetune_backbone_end_to_end(image_splits: None, tmp_path: Path) -> None:
    """The backbone trains on decoded images, is saved with the head, and a loaded checkpoint
    scores from images through it (the packaged backbone's feature caches do not apply)."""
    from artifact.imaging import load_and_preprocess
    from models.backbones import create_backbone
    from models.tagger import load_checkpoint
    from models.train import load_split, predict

    config = config_for("ml2p", epochs=1, batch_size=4, distill_weight=0.0,
                        finetune_backbone=True, backbone_lr=1e-3)
    trainer = Trainer(config, tmp_path / "run")
    result = trainer.fit()
    packaged = create_backbone("efficientnet_lite0").state_dict()
    trained = trainer.tagger.backbone.state_dict()
    changed = [k for k, v in trained.items() if v.is_floating_point()
               and not torch.equal(v, packaged[k])]
    assert len(changed) > len(trained) // 2  # weights and BN statistics moved
    tagger = load_checkpoint(result["checkpoint"])
    assert tagger.backbone_finetuned
    for key, value in tagger.backbone.state_dict().items():
        assert torch.equal(value, trained[key]), key
    split = load_split("synthetic", "val", "efficientnet_lite0")
    labels = tagger.transform_labels(trainer.raw_labels.cpu()).detach()
    scores = predict(tagger, split, labels)  # [4, L]
    with torch.no_grad():
        images = torch.from_numpy(np.stack([load_and_preprocess(str(p)) for p in split.paths]))
        expected = tagger.score(tagger.encode_images(images), labels).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    frozen = load_checkpoint(result["checkpoint"])
    frozen.backbone_finetuned = False  # as if it were a frozen-backbone model: cached taps
    assert not np.allclose(predict(frozen, split, labels), scores, atol=1e-3)
