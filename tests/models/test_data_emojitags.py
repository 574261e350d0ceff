"""EmojiTags builder on a miniature npm tree (no npm, no network), and its split rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import write_emoji_modules
from PIL import Image

from models.data import DatasetNotFoundError, load_dataset
from models.data.emojitags import (
    SPLIT_FILE,
    SceneLayout,
    build_emojitags,
    generate_scenes,
    make_split,
    read_catalog,
)
from models.data.voc2007 import voc_label_names

pytest.importorskip("resvg_py")  # openmoji art is SVG


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("emoji")
    modules = write_emoji_modules(base / "node_modules")
    out = build_emojitags(base / "a", seed=3, n_train=6, n_val=3, n_test=4, modules=modules,
                          split_file=base / "split.json")
    return {"base": base, "modules": modules, "out": out}


def test_catalog_skips_flags_keycaps_and_matches_code_points(built) -> None:
    catalog = read_catalog(built["modules"])
    codes = {e.hexcode for e in catalog}
    assert "1F1EB-1F1F7" not in codes and "0023-20E3" not in codes  # flag, keycap
    assert "2764" in codes  # FE0F-less openmoji hexcode matched to 2764-FE0F
    assert not any("1F3FB" in c for c in codes)  # no skin-tone variants
    assert all("10" not in e.keywords for e in catalog)


def test_build_writes_scenes_and_labels(built) -> None:
    meta = json.loads((built["out"] / "labels.json").read_text())
    assert meta["label_names"] == ["animal", "face", "fruit", "pet", "red", "vehicle", "yellow"]
    test = load_dataset("emojitags", "test", root=built["out"])
    train = load_dataset("emojitags", "train", root=built["out"])
    assert len(train) == 6 and len(test) == 4
    assert len(load_dataset("emojitags", "val", root=built["out"])) == 3
    assert (train.targets.sum(axis=1) >= 1).all()
    image, row = train[0]
    assert image.shape == (3, 224, 224)
    assert meta["version"] == 2
    # v2: the test scenes are drawn in the training styles, the openmoji ones are test-shift
    assert meta["styles"]["test"] == meta["styles"]["train"] == ["google", "twitter"]
    assert meta["styles"]["test-shift"] == ["openmoji"]
    shift = load_dataset("emojitags", "test-shift", root=built["out"])
    assert len(shift) == 4 and shift.label_names == test.label_names
    assert (~test.seen).sum() == len(meta["unseen"]) >= 1
    pictures = {split: {(built["out"] / r["file"]).read_bytes() for r in meta["splits"][split]}
                for split in ("train", "val", "test")}
    assert not pictures["test"] & (pictures["train"] | pictures["val"])  # scenes of its own


def test_version_1_test_is_version_2_test_shift(built, tmp_path) -> None:
    """v1 (test = openmoji scenes) is still buildable, and its test split is v2's
    test-shift scene for scene; asking a v1 build for test-shift names the version."""
    v1 = build_emojitags(tmp_path / "v1", seed=3, n_train=1, n_val=0, n_test=4,
                         modules=built["modules"], split_file=built["base"] / "split.json",
                         version=1)
    meta1 = json.loads((v1 / "labels.json").read_text())
    meta2 = json.loads((built["out"] / "labels.json").read_text())
    assert meta1["version"] == 1 and meta1["styles"]["test"] == ["openmoji"]
    assert meta1["splits"]["test"] == [{**r, "file": r["file"].replace("test-shift/", "test/")}
                                       for r in meta2["splits"]["test-shift"]]
    assert (v1 / "test/00002.png").read_bytes() == \
        (built["out"] / "test-shift/00002.png").read_bytes()
    with pytest.raises(ValueError, match="v1 .* no 'test-shift'"):
        load_dataset("emojitags", "test-shift", root=v1)
    with pytest.raises(ValueError, match="unknown split 'test-shift' of voc2007"):
        load_dataset("voc2007", "test-shift")


def test_deterministic_for_a_seed(built) -> None:
    again = build_emojitags(built["base"] / "b", seed=3, n_train=6, n_val=3, n_test=4,
                            modules=built["modules"], split_file=built["base"] / "split.json")
    first = json.loads((built["out"] / "labels.json").read_text())
    second = json.loads((again / "labels.json").read_text())
    assert first["splits"] == second["splits"]
    for name in ("train/00000.png", "test/00003.png"):
        assert (built["out"] / name).read_bytes() == (again / name).read_bytes()
    other = build_emojitags(built["base"] / "c", seed=4, n_train=6, n_val=0, n_test=0,
                            modules=built["modules"], split_file=built["base"] / "split.json")
    assert json.loads((other / "labels.json").read_text())["splits"]["train"] != \
        first["splits"]["train"]


def test_scene_layout_variants_keep_the_emoji_draw(built, tmp_path) -> None:
    """The default layout reproduces the built dataset; another one is obeyed (one emoji, on
    white) and, where it keeps the number of emoji per scene, keeps which emoji are drawn."""
    meta = json.loads((built["out"] / "labels.json").read_text())
    catalog = read_catalog(built["modules"])
    names = meta["label_names"]
    default = generate_scenes(catalog, names, tmp_path / "default", "test", 4, seed=3)
    assert default == meta["splits"]["test"]
    assert (tmp_path / "default/test/00003.png").read_bytes() == \
        (built["out"] / "test/00003.png").read_bytes()
    plain = SceneLayout(max_emoji=1, scale=(0.3, 0.3), max_rotation=0, plain_background=True)
    single = generate_scenes(catalog, names, tmp_path / "plain", "test", 4, seed=3, layout=plain)
    assert all(len(r["emoji"]) == 1 for r in single)
    with Image.open(tmp_path / "plain" / single[0]["file"]) as scene:
        pixels = np.asarray(scene)
    white = (pixels == 255).all(-1)
    assert 0.5 < white.mean() < 1  # a white canvas with one 67-px upright emoji on it
    upright = generate_scenes(catalog, names, tmp_path / "upright", "test", 4, seed=3,
                              layout=SceneLayout(max_rotation=0))
    assert [r["emoji"] for r in upright] == [r["emoji"] for r in default]


def test_split_rules() -> None:
    labels = [f"w{i:03d}" for i in range(200)] + ["car", "dog", "bird", "person"]
    split = make_split(labels, seed=0, protected=["bird", "person", "sofa"],
                       forced=["car", "dog", "sofa"])
    assert {"car", "dog"} <= set(split["unseen"]) and "sofa" not in split["unseen"]
    assert not {"bird", "person"} & set(split["unseen"])
    assert len(split["unseen"]) == round(0.1 * len(labels))
    assert make_split(labels, seed=0, protected=["bird"], forced=["car"]) == \
        make_split(labels, seed=0, protected=["bird"], forced=["car"])


def test_committed_split_respects_voc() -> None:
    split = json.loads(SPLIT_FILE.read_text())
    unseen = set(split["unseen"])
    assert {"car", "dog", "train"} <= unseen  # the VOC unseen names that are keywords
    assert not unseen & (set(voc_label_names()) - {"car", "dog", "sofa", "train"})
    assert 0.08 < len(unseen) / split["labels"] < 0.12


def test_missing_build_names_path(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="ml2p data emojitags") as err:
        load_dataset("emojitags", "train", root=tmp_path / "none")
    assert str(tmp_path / "none") in str(err.value)
