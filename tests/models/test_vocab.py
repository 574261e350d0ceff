"""ImageNet class names and the zero-shot exclusion list (models/vocab.py)."""

import json
from pathlib import Path

from artifact.vocabularies import read_json
from models import vocab

ASSETS = Path(vocab.__file__).parent / "assets"


def committed_unseen() -> set[str]:
    """Unseen labels of VOC 2007 and EmojiTags from the committed split files."""
    voc = read_json("voc_classes.json")
    emoji = json.loads((ASSETS / "emojitags_split.json").read_text())
    return set(voc["unseen"]) | set(emoji["unseen"])


def test_imagenet_classes_in_index_order() -> None:
    names = vocab.imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert names[281] == "tabby" and names[831] == "studio couch"


def test_rule_excludes_named_unseen_concepts_and_keeps_dog_breeds() -> None:
    excluded = {name: label for _, name, label in vocab.imagenet_exclusions({"car", "dog",
                                                                            "sofa", "train"})}
    # the examples: a concept named under its own word or an explicit synonym
    assert excluded["sports car"] == "car"
    assert excluded["bullet train"] == "train"
    assert excluded["studio couch"] == "sofa"
    # dog breeds are near-synonyms and stay (NUS-WIDE protocol), a "dogsled" does not
    assert "Labrador retriever" not in excluded and "beagle" not in excluded
    assert excluded["dogsled"] == "dog"
    # whole words only: "cardigan" and "carton" are not cars
    assert "cardigan" not in excluded and "carton" not in excluded


def test_committed_exclusion_file_is_what_the_rule_gives(tmp_path) -> None:
    out = tmp_path / "excluded.tsv"
    vocab.write_exclusion_file(committed_unseen(), out)
    assert out.read_text() == vocab.IMAGENET_EXCLUDED.read_text(), (
        "models/assets/imagenet_excluded.tsv is stale: regenerate it with "
        "vocab.write_exclusion_file(...)")


def test_exclusion_mask_matches_list() -> None:
    unseen = committed_unseen()
    mask = vocab.imagenet_exclusion_mask(unseen)
    assert mask.shape == (1000,)
    assert sorted(mask.nonzero()[0]) == sorted(i for i, _, _ in vocab.imagenet_exclusions(unseen))
