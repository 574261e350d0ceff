"""The regime setting (method.md §3, `TrainConfig.regime`): (a) visual features only, (b) the
ImageNet evidence through one shared input, strict (classes naming an unseen label removed) or
all classes — for every head, ConSE included (synthetic features: tests/models/synthetic.py;
ImageNet class 1 "goldfish" names the fixture's unseen label "goldfish")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.train import Trainer
from tests.models.synthetic import config_for, synthetic_split

HEADS = ["fast0tag", "lesa", "biam", "ml2p"]
EXCLUDED_CLASS = 1  # goldfish


def scores_for(trainer: Trainer, logits: torch.Tensor) -> torch.Tensor:
    split = synthetic_split("synthetic", 4, 5)
    taps = tuple(torch.from_numpy(t.astype(np.float32)) for t in split.cache.taps)
    tagger = trainer.tagger.eval()
    with torch.no_grad():
        labels = tagger.transform_labels(trainer.raw_labels)
        return tagger.score(tagger.encode_from_taps(taps, logits), labels)


def perturbed(logits: torch.Tensor, column: int) -> torch.Tensor:
    out = logits.clone()
    out[:, column] += 8.0
    return out


@pytest.mark.parametrize("head", HEADS)
def test_visual_regime_reads_no_imagenet_logits(head: str, synthetic: None,
                                               tmp_path: Path) -> None:
    trainer = Trainer(config_for(head, regime="visual", distill_weight=0.0), tmp_path)
    assert getattr(trainer.tagger.head, "evidence", None) is None
    assert not trainer.tagger.uses_imagenet_logits
    logits = torch.randn(4, 1000)
    assert torch.equal(scores_for(trainer, logits), scores_for(trainer, torch.randn(4, 1000)))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("regime", ["imagenet-strict", "imagenet-all"])
def test_evidence_regimes_share_one_input(head: str, regime: str, synthetic: None,
                                          tmp_path: Path) -> None:
    trainer = Trainer(config_for(head, regime=regime, distill_weight=0.0), tmp_path)
    evidence = trainer.tagger.head.evidence
    assert trainer.tagger.uses_imagenet_logits and evidence.in_features == 1000
    with torch.no_grad():  # every head starts from the same ConSE prior: class-name vectors
        expected = trainer.tagger.transform_labels(trainer.raw_imagenet).T  # [D, 1000]
    kept = trainer.imagenet_keep
    assert torch.allclose(evidence.weight[:, kept], expected[:, kept], atol=1e-6)
    logits = torch.randn(4, 1000)
    base = scores_for(trainer, logits)
    # a kept class moves the scores in both variants (the evidence is live)
    assert not torch.allclose(base, scores_for(trainer, perturbed(logits, 0)))
    moved = scores_for(trainer, perturbed(logits, EXCLUDED_CLASS))
    if regime == "imagenet-strict":  # removed from the input: the scores cannot see it
        assert bool(trainer.tagger.head.evidence_dropped[EXCLUDED_CLASS])
        assert torch.allclose(base, moved, atol=1e-5)
        assert trainer.tagger.config["head_kwargs"]["evidence_exclude"] == \
            np.flatnonzero(~kept.numpy()).tolist()
    else:
        assert trainer.tagger.head.evidence_dropped is None
        assert not torch.allclose(base, moved)


@pytest.mark.parametrize("head", HEADS)
def test_strict_evidence_survives_the_checkpoint(head: str, synthetic: None,
                                                 tmp_path: Path) -> None:
    from models.tagger import load_checkpoint
    from models.training_free import train_any

    result = train_any(config_for(head, regime="imagenet-strict", epochs=1), tmp_path)
    tagger = load_checkpoint(result["checkpoint"])
    assert bool(tagger.head.evidence_dropped[EXCLUDED_CLASS])
    assert tagger.provenance["train_config"]["regime"] == "imagenet-strict"


def test_conse_regimes(synthetic: None, tmp_path: Path) -> None:
    """(a): a classifier trained on the seen labels, mixing their vectors, no ImageNet logits;
    (b): the backbone's ImageNet classifier, strict or with every class."""
    from models.tagger import load_checkpoint
    from models.training_free import train_any

    def conse(regime: str, **changes):  # noqa: ANN202
        config = config_for("conse", regime=regime, distill_weight=0.0, **changes)
        config.model.update(dim=384, label_projection=False, head_kwargs={"top_t": 3})
        return config

    seen = train_any(conse("visual", epochs=4), tmp_path / "a")
    assert [r["epoch"] for r in seen["history"]] == [1, 2, 3, 4]
    assert seen["history"][-1]["bce"] < seen["history"][0]["bce"]
    head = load_checkpoint(seen["checkpoint"]).head
    assert head.source == "seen" and head.num_classes == 4  # the fixture's seen labels
    assert not load_checkpoint(seen["checkpoint"]).uses_imagenet_logits

    strict = load_checkpoint(train_any(conse("imagenet-strict"), tmp_path / "b")["checkpoint"])
    every = load_checkpoint(train_any(conse("imagenet-all"), tmp_path / "c")["checkpoint"])
    assert strict.head.source == every.head.source == "imagenet"
    assert bool(strict.head.excluded[EXCLUDED_CLASS]) and not bool(every.head.excluded.any())


def test_a_regime_sets_the_evidence_itself(synthetic: None, tmp_path: Path) -> None:
    clash = config_for("ml2p", regime="imagenet-all", distill_weight=0.0)
    clash.model["head_kwargs"]["imagenet_evidence_dim"] = 1000
    with pytest.raises(ValueError, match="imagenet_evidence_dim"):
        Trainer(clash, tmp_path)
    with pytest.raises(ValueError, match="distill_weight"):  # distillation reads ImageNet
        Trainer(config_for("ml2p", regime="visual", distill_weight=0.1), tmp_path)
    with pytest.raises(ValueError, match="unknown regime"):
        Trainer(config_for("ml2p", regime="imagenet"), tmp_path)


def test_recipes_name_their_regime() -> None:
    from models.recipes import load_recipe

    assert load_recipe("default")["regime"] == "imagenet-all"  # the shipped photo model
    for name in ("fast0tag", "lesa", "biam", "emoji", "ml2p-noevidence"):
        assert load_recipe(name)["regime"] == "visual", name
    assert load_recipe("conse")["regime"] == "imagenet-strict"
    assert load_recipe("conse-all")["regime"] == "imagenet-all"


def test_train_command_takes_a_regime(synthetic: None, tmp_path: Path) -> None:
    import dataclasses
    import json

    from ml2p_cli import main
    from models.tagger import load_checkpoint

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(dataclasses.asdict(config_for("fast0tag", epochs=1))))
    assert main(["train", "--recipe", str(recipe), "--regime", "imagenet-strict",
                 "--set", "distill_weight=0", "--out", str(tmp_path / "run")]) == 0
    tagger = load_checkpoint(tmp_path / "run" / "model.pt")
    assert tagger.uses_imagenet_logits and bool(tagger.head.evidence_dropped[EXCLUDED_CLASS])
