"""PASCAL VOC 2007 (trainval photos) from a COCO-format re-export, as a zero-shot dataset.

Layout under the root: ``annotations/instances_{train,val}.json``, ``images/{train,val}/``.
Image-level labels are the categories with at least one box (category 0 "objects" is an
unused placeholder). Images are de-duplicated by VOC id (the 6-digit file-name prefix; the
copies' labels are merged) and images without any box are dropped; both counts are logged.

Splits: ``train`` = ``images/train`` minus a fixed ~15 % carved out by VOC id as ``val``;
``test`` = ``images/val``. Zero-shot: unseen = car, dog, sofa, train (``seen`` mask).
Label texts come from ``artifact/vocabularies/voc_classes.json`` (shared with the service's
``voc-20`` vocabulary).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np

from artifact.vocabularies import read_json
from models.data.base import (
    SHARED_DATA,
    MultiLabelDataset,
    id_split,
    register,
    require,
    resolve_root,
)

log = logging.getLogger(__name__)

DEFAULT_ROOT = SHARED_DATA / "voc2007"
ENV_ROOT = "ML2P_VOC_ROOT"
VAL_FRACTION = 0.15
VAL_SEED = 0


@cache
def voc_classes() -> tuple[dict, ...]:
    """The 20 classes: ``{"id", "voc", "label"}`` in VOC order."""
    return tuple(read_json("voc_classes.json")["classes"])


def voc_label_names() -> list[str]:
    """The 20 label texts in VOC order ("aeroplane", …, "dining table", …, "tv monitor")."""
    return [c["label"] for c in voc_classes()]


def voc_unseen() -> list[str]:
    return list(read_json("voc_classes.json")["unseen"])


def voc_id(file_name: str) -> str:
    """The VOC 2007 image id: the six-digit prefix of the exported file name."""
    return Path(file_name).name[:6]


def read_coco_split(root: Path, folder: str) -> tuple[list[Path], list[str], np.ndarray]:
    """(image paths, VOC ids, targets [N,20]) of one exported folder, deduplicated."""
    ann_path = require(root / "annotations" / f"instances_{folder}.json",
                       "a COCO-format annotation file (images, annotations, categories)",
                       f"set {ENV_ROOT} or pass root= to point at the VOC 2007 export")
    image_dir = require(root / "images" / folder, f"a folder of the {folder} JPEG images")
    coco = json.loads(ann_path.read_text(encoding="utf-8"))
    column = {c["voc"]: i for i, c in enumerate(voc_classes())}
    category = {}
    for cat in coco["categories"]:
        if cat["name"] in column:
            category[cat["id"]] = column[cat["name"]]
        elif cat["name"] != "objects":
            log.warning("%s: ignoring unknown category %r", ann_path, cat["name"])
    boxes: dict[int, set[int]] = defaultdict(set)
    for ann in coco["annotations"]:
        if ann["category_id"] in category:
            boxes[ann["image_id"]].add(category[ann["category_id"]])

    by_id: dict[str, tuple[str, set[int]]] = {}
    for image in sorted(coco["images"], key=lambda im: im["file_name"]):
        vid = voc_id(image["file_name"])
        first, labels = by_id.get(vid, (image["file_name"], set()))
        by_id[vid] = (first, labels | boxes.get(image["id"], set()))
    duplicates = len(coco["images"]) - len(by_id)
    unlabeled = sorted(v for v, (_, labels) in by_id.items() if not labels)
    kept = sorted(v for v, (_, labels) in by_id.items() if labels)
    log.info("voc2007 %s: %d images, %d duplicate VOC ids merged, %d without boxes dropped, "
             "%d kept", folder, len(coco["images"]), duplicates, len(unlabeled), len(kept))
    targets = np.zeros((len(kept), len(column)), dtype=np.int8)
    for row, vid in enumerate(kept):
        targets[row, sorted(by_id[vid][1])] = 1
    return [image_dir / by_id[v][0] for v in kept], kept, targets


@register("voc2007")
def load_voc2007(split: str, root: str | Path | None = None, val_fraction: float = VAL_FRACTION,
                 seed: int = VAL_SEED) -> MultiLabelDataset:
    """VOC 2007 split `split`; root from the argument, ``ML2P_VOC_ROOT`` or ../shared/data."""
    base = require(resolve_root(root, ENV_ROOT, DEFAULT_ROOT),
                   "the VOC 2007 COCO export (annotations/ and images/ folders)",
                   f"set {ENV_ROOT} or pass root=")
    paths, ids, targets = read_coco_split(base, "val" if split == "test" else "train")
    if split != "test":
        val_ids = id_split(ids, val_fraction, seed)
        keep = [i for i, v in enumerate(ids) if (v in val_ids) == (split == "val")]
        paths, ids, targets = [paths[i] for i in keep], [ids[i] for i in keep], targets[keep]
    names = voc_label_names()
    unseen = set(voc_unseen())
    seen = np.array([n not in unseen for n in names])
    return MultiLabelDataset("voc2007", split, paths, targets, names, seen, ids)
