"""`ml2p train` for any head: trainable heads go through `Trainer.fit`; a training-free head
(ConSE, `trainable = False`) is set up from the same Trainer state and saved without steps.

ConSE's class vectors are the ImageNet-1k class names (`models.vocab.imagenet_class_names`)
embedded by the recipe's label embedder and passed through the model's label transform (the
same centring as the labels), and its exclusion mask drops every ImageNet class that names a
label unseen in an evaluated dataset (`models.vocab.imagenet_exclusion_mask`), so the
checkpoint scores exactly like every other one through `Tagger.score`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from models.provenance import git_commit
from models.tagger import save_checkpoint
from models.train import TrainConfig, Trainer


def is_trainable(head: torch.nn.Module) -> bool:
    return bool(getattr(head, "trainable", True))


def fit_training_free(trainer: Trainer) -> dict:
    """Set a training-free head up (ConSE) from `trainer`'s vocabularies and save it."""
    head = trainer.tagger.head
    if not hasattr(head, "set_class_vectors"):
        raise TypeError(f"{type(head).__name__} is not trainable and has no class vectors to set")
    started = time.perf_counter()
    with torch.no_grad():
        head.set_class_vectors(trainer.tagger.transform_labels(trainer.raw_imagenet))
    head.set_exclusion_mask(~trainer.imagenet_keep if getattr(head, "exclude_unseen", True)
                            else None)
    record = {"epoch": 0, "seconds": round(time.perf_counter() - started, 1),
              "val": trainer.validate()}
    history = [record]
    cfg: TrainConfig = trainer.config
    provenance = {"train_config": cfg.to_json(), "git_commit": git_commit() or "unknown",
                  "training_free": True,
                  "imagenet_classes_excluded": int(head.excluded.sum()),
                  "excluded_labels": sorted(trainer.excluded)}
    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(trainer.tagger, trainer.out_dir / "model.pt", history=history,
                           provenance=provenance)
    return {"history": history, "checkpoint": str(path)}


def train_any(config: TrainConfig, out_dir: Path, resume: bool = True) -> dict:
    """`models.train.train` for every head, training-free ones included."""
    trainer = Trainer(config, Path(out_dir))
    if not is_trainable(trainer.tagger.head):
        return fit_training_free(trainer)
    return trainer.fit(resume=resume)
