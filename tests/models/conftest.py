"""Shared settings for model tests: one CPU thread (the machine is shared), fixed seeds, and
the `synthetic` fixture (synthetic features in place of the datasets: tests/models/synthetic.py)."""

import os

import pytest
import torch

from tests.models.synthetic import FakeEmbedder, synthetic_split

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.train as train_module

    def load_split(dataset: str, split: str, backbone: str, limit=None, seed: int = 0):  # noqa: ANN001
        return synthetic_split(dataset, 24 if split == "train" else 12,
                               0 if split == "train" else 1)

    monkeypatch.setattr(train_module, "load_split", load_split)
    monkeypatch.setattr(train_module, "unseen_labels", lambda datasets: {"goldfish", "tall thing"})
    monkeypatch.setattr(train_module, "create_embedder", lambda kind: FakeEmbedder())
