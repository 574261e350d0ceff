"""NUS-WIDE and Open Images V4 loaders on tiny fixtures written in the published formats."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import NUS_CONCEPTS, NUS_TAGS, OI_TRAINABLE, write_nuswide, write_openimages

from models.data import DatasetNotFoundError, load_dataset
from models.data.nuswide import nuswide_word_vectors


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory):
    return write_nuswide(tmp_path_factory.mktemp("nus") / "NUS-WIDE")


def test_nuswide_protocol(nus_root) -> None:
    train = load_dataset("nuswide", "train", root=nus_root)
    val = load_dataset("nuswide", "val", root=nus_root)
    test = load_dataset("nuswide", "test", root=nus_root)
    seen = [t for t in NUS_TAGS if t not in NUS_CONCEPTS]
    assert test.label_names == seen + NUS_CONCEPTS
    assert test.seen.tolist() == [True] * len(seen) + [False] * len(NUS_CONCEPTS)
    assert len(train) + len(val) == 10 and len(val) == 2 and len(test) == 6
    assert (train.targets[:, ~train.seen] == -1).all()  # unseen never in training
    assert set(np.unique(test.targets)) <= {0, 1}
    # the unseen columns come from AllLabels, indexed through Imagelist.txt
    everything = (nus_root / "ImageList" / "Imagelist.txt").read_text().split()
    row = everything.index(test.ids[0].replace("/", "\\"))
    dog = (nus_root / "AllLabels" / "Labels_dog.txt").read_text().split()[row]
    assert test.targets[0, test.label_names.index("dog")] == int(dog)
    image, _ = test[0]
    assert image.shape == (3, 224, 224)
    assert all(p.exists() for p in test.image_paths)


def test_nuswide_word_vectors(nus_root) -> None:
    vectors = nuswide_word_vectors(nus_root)
    assert set(vectors) == set(NUS_TAGS) | set(NUS_CONCEPTS)
    assert np.allclose([np.linalg.norm(v) for v in vectors.values()], 1.0, atol=1e-5)


def test_openimages_protocol(tmp_path) -> None:
    root = write_openimages(tmp_path / "oi")
    train = load_dataset("openimages", "train", root=root)
    test = load_dataset("openimages", "test", root=root, n_unseen=2)
    assert train.mids == OI_TRAINABLE and train.seen.all()
    assert test.mids[: len(OI_TRAINABLE)] == OI_TRAINABLE and (~test.seen).sum() == 2
    assert "dog" in train.label_names
    assert set(np.unique(train.targets)) <= {-1, 0, 1}
    assert ((train.targets >= 0).sum(axis=1) >= 1).all()  # every image has a verified label
    assert all(p.exists() for p in test.image_paths)
    assert len(load_dataset("openimages", "val", root=root)) >= 1
    # an explicit unseen list wins over the frequency rule
    (root / "unseen_labels.txt").write_text("/m/05\n")
    assert load_dataset("openimages", "test", root=root).mids[-1] == "/m/05"


def test_protocol_missing_paths(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="TagList1k"):
        (tmp_path / "nus").mkdir()
        load_dataset("nuswide", "train", root=tmp_path / "nus")
    with pytest.raises(DatasetNotFoundError, match="classes-trainable"):
        (tmp_path / "oi").mkdir()
        load_dataset("openimages", "train", root=tmp_path / "oi")
