"""Every head trains through the shared path (`train_any`): the trainable baselines through
the real `Trainer` (loss dispatch, distillation on) on synthetic features with a falling ranking
loss; ConSE as a checkpoint without steps. (Head shapes: tests/models/test_baselines.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models.synthetic import LABELS, FakeEmbedder, config_for, synthetic_split


@pytest.mark.parametrize("head", ["fast0tag", "lesa", "biam", "ml2p"])
def test_trains_through_trainer(head: str, synthetic: None, tmp_path: Path) -> None:
    from models.tagger import load_checkpoint
    from models.training_free import train_any

    result = train_any(config_for(head), tmp_path)
    history = result["history"]
    first, last = history[0]["rank"], history[-1]["rank"]
    print(f"{head}: rank loss {first:.4f} → {last:.4f}")
    assert last < first
    assert "distill" in history[0]  # the distillation option is live for every head
    assert set(history[-1]["val"]["synthetic"]) == {"zsl", "gzsl"}
    tagger = load_checkpoint(result["checkpoint"])
    assert tagger.config["head"] == head


def test_conse_is_training_free(synthetic: None, tmp_path: Path) -> None:
    from models.tagger import load_checkpoint
    from models.train import predict
    from models.training_free import train_any

    config = config_for("conse", epochs=0, distill_weight=0.0)
    config.model.update(dim=384, label_projection=False, head_kwargs={"top_t": 10})
    result = train_any(config, tmp_path)
    assert [r["epoch"] for r in result["history"]] == [0]
    assert not (tmp_path / "train_state.pt").exists()  # no optimiser steps
    tagger = load_checkpoint(result["checkpoint"])
    head = tagger.head
    assert bool(head.class_vectors.any())
    assert bool(head.excluded[1])  # ImageNet class 1 is "goldfish", an unseen label here
    config.model["head_kwargs"] = {"top_t": 10, "exclude_unseen": False}  # conse-all
    every = load_checkpoint(train_any(config, tmp_path / "all")["checkpoint"]).head
    assert not bool(every.excluded.any())
    split = synthetic_split("synthetic", 5, 3)
    vectors = tagger.transform_labels(FakeEmbedder().embed(LABELS))
    scores = predict(tagger, split, vectors)
    assert scores.shape == (5, len(LABELS)) and np.isfinite(scores).all()


def test_one_command_trains_every_seed_and_writes_fp16_copies(synthetic: None,
                                                              tmp_path: Path) -> None:
    """`ml2p train --seeds 0 1 --half`: a run per seed in OUT/seed<N>, each with an fp16
    checkpoint beside it that loads back with the same config and near-equal weights."""
    import dataclasses
    import json

    import torch

    from ml2p_cli import main
    from models.tagger import load_checkpoint

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(dataclasses.asdict(config_for("ml2p", epochs=2))))
    assert main(["train", "--recipe", str(recipe), "--seeds", "0", "1", "--half",
                 "--out", str(tmp_path / "runs")]) == 0
    seeds = []
    for seed in (0, 1):
        run = tmp_path / "runs" / f"seed{seed}"
        (half,) = run.glob("*-fp16.pt")
        full = half.with_name(half.name.removesuffix("-fp16.pt") + ".pt")
        a, b = load_checkpoint(full), load_checkpoint(half)
        assert a.config == b.config
        for x, y in zip(a.head.state_dict().values(), b.head.state_dict().values(), strict=True):
            if x.is_floating_point():
                assert torch.allclose(x, y, atol=1e-2, rtol=1e-2)
        assert half.stat().st_size < full.stat().st_size
        seeds.append(next(iter(a.head.state_dict().values())))
    assert not torch.equal(seeds[0], seeds[1])  # two seeds, two different runs
