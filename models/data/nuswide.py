"""NUS-WIDE in the zero-shot protocol of Fast0Tag / LESA / BiAM (method.md §6).

Expected layout under the root (the official NUS-WIDE release; images are not part of it):

- ``NUS_WID_Tags/TagList1k.txt``: the 1,000 tags, one per line (the seen candidates).
- ``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``): the 81 concepts, one per line
  (the unseen labels). Seen = TagList1k minus the concepts (925 labels).
- ``ImageList/{Train,Test}Imagelist.txt``: one image per line as ``<folder>\\<file>.jpg``
  (Windows separators, as released); images are read from ``Flickr/<folder>/<file>.jpg``.
  ``ImageList/Imagelist.txt`` (all 269,648 images) orders the ``AllLabels`` files.
- ``NUS_WID_Tags/{Train,Test}_Tags1k.dat``: per split, one tab-separated 0/1 row of the
  1,000 tags per image (assumption: the tag matrices the official release ships next to
  the lists; seen targets come from them).
- ``AllLabels/Labels_<concept>.txt``: one 0/1 per line for every image of ``Imagelist.txt``
  (the 81 human-verified concepts; unseen targets come from them).
- Optional ``word_vectors.pkl`` (or the BiAM name
  ``wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300``): a pickle of
  ``[seen (1000,300), unseen (81,300)]`` raw GloVe vectors in TagList1k / Concepts81
  order; ``nuswide_word_vectors`` returns them per label name, L2-normalised.

Label space: the 925 seen tags followed by the 81 concepts (the ``seen`` mask says which).
Targets: 1 / 0 for known labels; in ``train`` / ``val`` the unseen columns are -1 (never
used in training, as the protocol demands); ``test`` has both. ``val`` is the last 20 %
of the train list (the split BiAM uses); images are never shuffled.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from models.data.base import (
    SHARED_DATA,
    DatasetNotFoundError,
    MultiLabelDataset,
    register,
    require,
    resolve_root,
)

log = logging.getLogger(__name__)

ENV_ROOT = "ML2P_NUSWIDE_ROOT"
DEFAULT_ROOT = SHARED_DATA / "nuswide"
VAL_FRACTION = 0.2
VECTOR_FILES = ("word_vectors.pkl", "wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300")


def _lines(path: Path, expected: str) -> list[str]:
    text = require(path, expected).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _first(root: Path, candidates: tuple[str, ...], expected: str) -> Path:
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise DatasetNotFoundError(
        f"dataset path {root / candidates[0]} does not exist; expected {expected}")


def _matrix(path: Path, rows: int, cols: int) -> np.ndarray:
    """A whitespace-separated 0/1 matrix file, checked against the expected shape."""
    data = np.loadtxt(require(path, f"a {rows}x{cols} 0/1 matrix"), dtype=np.int8, ndmin=2)
    if data.shape != (rows, cols):
        raise ValueError(f"{path}: shape {data.shape}, expected ({rows}, {cols})")
    return data


def label_sets(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(TagList1k, Concepts81, index of the seen tags in TagList1k)."""
    tags = _lines(root / "NUS_WID_Tags" / "TagList1k.txt", "the 1,000 NUS-WIDE tags")
    concept_file = _first(root, ("Concepts81.txt", "ConceptsList/Concepts81.txt"),
                          "the 81 NUS-WIDE concepts, one per line")
    concepts = _lines(concept_file, "the 81 concepts")
    seen_index = np.array([i for i, t in enumerate(tags) if t not in set(concepts)])
    return tags, concepts, seen_index


def _image_path(root: Path, entry: str) -> Path:
    return root / "Flickr" / Path(*entry.replace("\\", "/").split("/"))


@register("nuswide")
def load_nuswide(split: str, root: str | Path | None = None,
                 val_fraction: float = VAL_FRACTION) -> MultiLabelDataset:
    base = require(resolve_root(root, ENV_ROOT, DEFAULT_ROOT),
                   "the NUS-WIDE release (NUS_WID_Tags/, ImageList/, AllLabels/, Flickr/)",
                   f"set {ENV_ROOT} or pass root=")
    tags, concepts, seen_index = label_sets(base)
    part = "Test" if split == "test" else "Train"
    entries = _lines(base / "ImageList" / f"{part}Imagelist.txt", f"the {part.lower()} image list")
    tag_matrix = _matrix(base / "NUS_WID_Tags" / f"{part}_Tags1k.dat", len(entries), len(tags))
    targets = np.full((len(entries), len(seen_index) + len(concepts)), -1, dtype=np.int8)
    targets[:, : len(seen_index)] = tag_matrix[:, seen_index] > 0
    if split == "test":
        everything = _lines(base / "ImageList" / "Imagelist.txt", "the list of all images")
        row = {e: i for i, e in enumerate(everything)}
        missing = [e for e in entries if e not in row]
        if missing:
            raise ValueError(f"{len(missing)} test images are not in Imagelist.txt, "
                             f"e.g. {missing[0]}")
        rows = np.array([row[e] for e in entries])
        for col, concept in enumerate(concepts):
            values = _lines(base / "AllLabels" / f"Labels_{concept}.txt",
                            f"one 0/1 per image of Imagelist.txt for concept {concept!r}")
            if len(values) != len(everything):
                raise ValueError(f"Labels_{concept}.txt has {len(values)} lines, "
                                 f"expected {len(everything)}")
            targets[:, len(seen_index) + col] = np.asarray(values, dtype=np.int8)[rows] > 0
    else:
        cut = int(round((1 - val_fraction) * len(entries)))
        keep = np.arange(cut) if split == "train" else np.arange(cut, len(entries))
        entries, targets = [entries[i] for i in keep], targets[keep]
    names = [tags[i] for i in seen_index] + concepts
    seen = np.r_[np.ones(len(seen_index), bool), np.zeros(len(concepts), bool)]
    log.info("nuswide %s: %d images, %d seen + %d unseen labels", split, len(entries),
             len(seen_index), len(concepts))
    return MultiLabelDataset("nuswide", split, [_image_path(base, e) for e in entries], targets,
                             names, seen, [e.replace("\\", "/") for e in entries])


def nuswide_word_vectors(root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Label name -> L2-normalised 300-d GloVe vector from the protocol's pickle."""
    base = resolve_root(root, ENV_ROOT, DEFAULT_ROOT)
    tags, concepts, _ = label_sets(base)
    path = _first(base, VECTOR_FILES, "a pickle of [seen (1000,300), unseen (81,300)] vectors")
    with path.open("rb") as handle:
        seen_vectors, unseen_vectors = (np.asarray(v, np.float32) for v in pickle.load(handle))
    if seen_vectors.shape[0] != len(tags) or unseen_vectors.shape[0] != len(concepts):
        raise ValueError(f"{path}: {seen_vectors.shape} / {unseen_vectors.shape} vectors for "
                         f"{len(tags)} tags / {len(concepts)} concepts")
    vectors = np.concatenate([seen_vectors, unseen_vectors])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return dict(zip(tags + concepts, vectors, strict=True))
