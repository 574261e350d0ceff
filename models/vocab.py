"""Vocabularies the trainer and evaluator share: ImageNet class names and zero-shot exclusions."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np

from artifact.vocabularies import read_lines

IMAGENET_EXCLUDED = Path(__file__).parent / "assets" / "imagenet_excluded.tsv"
# ImageNet-1k indices 151-268 are dog breeds: near-synonyms stay, as in the NUS-WIDE protocol.
DOG_BREEDS = range(151, 269)
# Words ImageNet uses for an unseen concept under another name ("studio couch" is a sofa).
UNSEEN_SYNONYMS = {"sofa": ("couch",), "car": ("automobile",), "train": ("locomotive",)}


@cache
def imagenet_synonyms() -> tuple[tuple[str, ...], ...]:
    """The 1000 classes in index order, each as its comma-separated synonyms."""
    lines = read_lines("imagenet_classes.txt")
    classes = tuple(tuple(s.strip() for s in line.split(",") if s.strip()) for line in lines)
    if len(classes) != 1000:
        raise ValueError(f"imagenet_classes.txt has {len(classes)} classes, expected 1000")
    return classes


def imagenet_class_names() -> list[str]:
    """One label text per class: its first synonym (what ConSE and distillation embed)."""
    return [synonyms[0] for synonyms in imagenet_synonyms()]


def unseen_labels(datasets: tuple[str, ...] | list[str]) -> set[str]:
    """Every label that is unseen in any of `datasets` (removed from all training)."""
    from models.data import load_dataset

    unseen: set[str] = set()
    for name in datasets:
        data = load_dataset(name, "test")
        unseen.update(n for n, seen in zip(data.label_names, data.seen, strict=True) if not seen)
    return unseen


def imagenet_exclusions(unseen: set[str]) -> list[tuple[int, str, str]]:
    """ImageNet classes whose name contains an unseen label as a whole word or phrase.

    Returns (index, class name, matched label). Dog breeds are kept.
    """
    patterns = {
        label: re.compile(rf"\b({'|'.join(re.escape(w.lower()) for w in words)})s?\b")
        for label in unseen
        for words in [(label, *UNSEEN_SYNONYMS.get(label.lower(), ()))]
    }
    excluded = []
    for index, synonyms in enumerate(imagenet_synonyms()):
        if index in DOG_BREEDS:
            continue
        for label, pattern in sorted(patterns.items()):
            if any(pattern.search(s.lower()) for s in synonyms):
                excluded.append((index, synonyms[0], label))
                break
    return excluded


def imagenet_exclusion_mask(unseen: set[str]) -> np.ndarray:
    """[1000] bool, True where the class must not serve as a distillation/ConSE target."""
    mask = np.zeros(1000, dtype=bool)
    for index, _, _ in imagenet_exclusions(unseen):
        mask[index] = True
    return mask


def write_exclusion_file(unseen: set[str], path: Path = IMAGENET_EXCLUDED) -> None:
    rows = ["index\tclass\tunseen_label"]
    rows += [f"{i}\t{name}\t{label}" for i, name, label in imagenet_exclusions(unseen)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
