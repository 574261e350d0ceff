"""VOC 2007 loader on the real shared export, plus bad-data handling on tiny fixtures."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from data_fixtures import write_voc

from models.data import DATASETS, DatasetNotFoundError, load_dataset, subset_labels
from models.data.voc2007 import DEFAULT_ROOT, voc_label_names

real = pytest.mark.skipif(not (DEFAULT_ROOT / "annotations").exists(),
                          reason="shared VOC 2007 data not present")


@pytest.fixture(scope="module")
def voc() -> dict:
    return {s: load_dataset("voc2007", s) for s in ("train", "val", "test")}


@real
def test_counts_after_dedup(voc: dict) -> None:
    # images/train: 3,519 files, 13 duplicate VOC ids, 31 without boxes -> 3,475
    assert len(voc["train"]) + len(voc["val"]) == 3475
    assert len(voc["val"]) == round(0.15 * 3475)
    assert len(voc["test"]) == 990  # images/val: 1,004 - 2 duplicates - 12 unlabeled
    for data in voc.values():
        assert len(set(data.ids)) == len(data)
        assert (data.targets == 1).any(axis=1).all()  # every kept image has a label
        assert set(np.unique(data.targets)) <= {0, 1}


@real
def test_splits_disjoint_by_voc_id(voc: dict) -> None:
    ids = {s: set(d.ids) for s, d in voc.items()}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    again = load_dataset("voc2007", "val")
    assert again.ids == voc["val"].ids  # fixed seed


@real
def test_labels_and_zero_shot_split(voc: dict) -> None:
    data = voc["test"]
    assert data.label_names == voc_label_names()
    assert {"dining table", "potted plant", "tv monitor"} <= set(data.label_names)
    assert sorted(data.unseen_labels) == ["car", "dog", "sofa", "train"]
    assert data.seen.sum() == 16
    image, row = data[0]
    assert image.shape == (3, 224, 224) and str(image.dtype) == "torch.float32"
    assert row.tolist() == data.targets[0].tolist()
    seen_only = voc["train"].seen_only()
    assert len(seen_only.label_names) == 16 and not set(seen_only.label_names) & {"car", "dog"}


def test_registry_knows_all() -> None:
    assert {"voc2007", "emojitags", "nuswide", "openimages"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("voc2007", "training")


def test_missing_path_names_path_and_expectation(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "no-voc-here"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("voc2007", "train", root=missing)
    assert str(missing) in str(err.value) and "expected" in str(err.value)
    (missing / "images" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="instances_train.json.*COCO-format"):
        load_dataset("voc2007", "train", root=missing)
    monkeypatch.setenv("ML2P_VOC_ROOT", str(tmp_path / "env-root"))
    with pytest.raises(DatasetNotFoundError, match="env-root"):
        load_dataset("voc2007", "test")


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog) -> None:
    root = write_voc(tmp_path / "voc", n_train=12, corrupt=1)
    data = load_dataset("voc2007", "train", root=root, val_fraction=0.0)
    assert len(data) == 12
    bad = data.ids.index("000000")
    with caplog.at_level(logging.WARNING):
        image, row = data[bad]  # no crash: zero image, all-unknown targets
    assert float(image.abs().sum()) == 0 and (row == -1).all()
    assert data.skipped == 1 and "unreadable image" in caplog.text
    valid = data.valid_indices()
    assert bad not in valid and len(valid) == 11 and data.skipped == 1
    clean = data.drop_corrupt()
    assert len(clean) == 11 and "000000" not in clean.ids


def test_restrict_builds_joint_label_space(tmp_path) -> None:
    data = load_dataset("voc2007", "test", root=write_voc(tmp_path / "voc", corrupt=0))
    joint = subset_labels([data], exclude={"person"}) + ["smile"]
    mapped = data.restrict(joint)
    assert mapped.label_names == joint and "car" not in joint and "person" not in joint
    col = data.label_names.index("bird")
    assert (mapped.targets[:, joint.index("bird")] == data.targets[:, col]).all()
    assert (mapped.targets[:, -1] == -1).all()  # a label VOC does not know is unknown
