"""Open Images V4 in the zero-shot protocol of LESA / BiAM (method.md §6).

Expected layout under the root (the 2018_04 release files; images downloaded separately):

- ``classes-trainable.txt``: the 7,186 trainable label MIDs, one per line = the seen labels.
- ``class-descriptions.csv``: ``MID,display name`` per line, no header (V4 style); a
  header line ``LabelName,DisplayName`` is tolerated.
- ``{train,validation,test}/{split}-annotations-human-imagelabels.csv`` with header
  ``ImageID,Source,LabelName,Confidence``: the human-verified image labels
  (Confidence 1 = present, 0 = verified absent).
- images as ``{train,validation,test}/<ImageID>.jpg`` (``images/<split>/`` also accepted).
- Optional ``unseen_labels.txt``: the unseen MIDs, one per line. Without it, the unseen
  set is computed as in the protocol: the 400 labels outside ``classes-trainable`` with the
  most human-verified positives in the test annotations (ties by MID).

Targets: the protocol's 2·confidence − 1 for human-verified labels and 0 otherwise, in
this project's 1/0/−1 convention: verified present = 1, verified absent = 0, not verified
= −1 (unknown, ignored; Open Images labels are sparse, so "not verified" is never a
negative). ``train`` = the train CSV,
``val`` = the validation CSV, ``test`` = the test CSV; train/val carry the seen labels
only, test seen + unseen. Label names are the display names (lower-cased); MIDs are kept
in ``dataset.mids``. Images without any known label are dropped, and duplicate rows of an
image are merged (a positive wins).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from models.data.base import (
    SHARED_DATA,
    MultiLabelDataset,
    register,
    require,
    resolve_root,
)

log = logging.getLogger(__name__)

ENV_ROOT = "ML2P_OPENIMAGES_ROOT"
DEFAULT_ROOT = SHARED_DATA / "openimages"
N_UNSEEN = 400
FOLDERS = {"train": "train", "val": "validation", "test": "test"}


def read_descriptions(root: Path) -> dict[str, str]:
    path = require(root / "class-descriptions.csv", "`MID,display name` lines")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.reader(handle) if len(r) >= 2 and r[0] != "LabelName"]
    return {mid.strip(): name.strip() for mid, name, *_ in rows}


def read_annotations(root: Path, folder: str) -> list[tuple[str, str, int]]:
    """(ImageID, MID, confidence 0/1) rows of the human-verified label CSV."""
    path = require(root / folder / f"{folder}-annotations-human-imagelabels.csv",
                   "the human-verified image labels (ImageID,Source,LabelName,Confidence)")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"ImageID", "LabelName", "Confidence"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        return [(r["ImageID"], r["LabelName"], int(float(r["Confidence"]))) for r in reader]


def unseen_mids(root: Path, seen: set[str], test_rows: list[tuple[str, str, int]],
                count: int = N_UNSEEN) -> list[str]:
    """The given unseen list, else the `count` most frequent non-trainable test positives."""
    given = root / "unseen_labels.txt"
    if given.exists():
        return [m.strip() for m in given.read_text().splitlines() if m.strip()]
    positives = Counter(mid for _, mid, conf in test_rows if conf == 1 and mid not in seen)
    ranked = sorted(positives.items(), key=lambda item: (-item[1], item[0]))
    return [mid for mid, _ in ranked[:count]]


def _image_path(root: Path, folder: str, image_id: str) -> Path:
    direct = root / folder / f"{image_id}.jpg"
    return direct if direct.exists() else root / "images" / folder / f"{image_id}.jpg"


@register("openimages")
def load_openimages(split: str, root: str | Path | None = None,
                    n_unseen: int = N_UNSEEN) -> MultiLabelDataset:
    base = require(resolve_root(root, ENV_ROOT, DEFAULT_ROOT),
                   "the Open Images V4 files (classes-trainable.txt, class-descriptions.csv, "
                   "<split>/<split>-annotations-human-imagelabels.csv, images)",
                   f"set {ENV_ROOT} or pass root=")
    seen_mids = [m.strip() for m in require(base / "classes-trainable.txt", "one MID per line")
                 .read_text().splitlines() if m.strip()]
    names = read_descriptions(base)
    folder = FOLDERS[split]
    rows = read_annotations(base, folder)
    test_rows = rows if split == "test" else read_annotations(base, "test")
    unseen = unseen_mids(base, set(seen_mids), test_rows, n_unseen)
    mids = seen_mids + (unseen if split == "test" else [])
    column = {m: i for i, m in enumerate(mids)}

    images: dict[str, int] = {}
    entries: list[tuple[int, int, int]] = []
    for image_id, mid, conf in rows:
        if mid in column:
            entries.append((images.setdefault(image_id, len(images)), column[mid], conf))
    targets = np.full((len(images), len(mids)), -1, dtype=np.int8)
    for row, col, conf in entries:
        targets[row, col] = max(targets[row, col], conf)
    ids = list(images)
    label_names = _unique_names([names.get(m, m).lower() for m in mids], mids)
    seen = np.array([i < len(seen_mids) for i in range(len(mids))])
    log.info("openimages %s: %d images with a verified label, %d seen + %d unseen labels",
             split, len(ids), len(seen_mids), len(mids) - len(seen_mids))
    data = MultiLabelDataset("openimages", split, [_image_path(base, folder, i) for i in ids],
                             targets, label_names, seen, ids)
    data.mids = mids
    return data


def _unique_names(names: list[str], mids: list[str]) -> list[str]:
    """Display names can repeat across MIDs; disambiguate repeats with their MID."""
    counts = Counter(names)
    return [f"{n} ({m})" if counts[n] > 1 else n for n, m in zip(names, mids, strict=True)]
