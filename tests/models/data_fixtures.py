"""Tiny on-disk datasets in the exact published file formats, for tests (and end-to-end runs).

`write_nuswide(root)`, `write_openimages(root)`, `write_voc(root)` and `write_emoji_modules(root)`
each build a small tree under `root` and return it; images are small random JPEG/PNG files.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=80)


# -- NUS-WIDE ------------------------------------------------------------------------------
NUS_TAGS = ["sky", "water", "dog", "sunset", "beach", "car", "tree", "flower", "city", "snow"]
NUS_CONCEPTS = ["dog", "car", "snow", "animal"]  # "animal" is not a TagList1k tag


def write_nuswide(root: Path, n_train: int = 10, n_test: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "NUS_WID_Tags").mkdir(parents=True)
    (root / "ImageList").mkdir()
    (root / "AllLabels").mkdir()
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(NUS_TAGS) + "\n")
    (root / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    everything = [f"folder{i % 3}\\{i:04d}_{1000 + i}.jpg" for i in range(n_train + n_test + 2)]
    train, test = everything[:n_train], everything[n_train + 2:]  # two images in neither list
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(everything) + "\r\n")
    for name, entries in (("Train", train), ("Test", test)):
        (root / "ImageList" / f"{name}Imagelist.txt").write_text("\r\n".join(entries) + "\r\n")
        tags = rng.integers(0, 2, (len(entries), len(NUS_TAGS)))
        lines = ["\t".join(str(v) for v in row) + "\t" for row in tags]
        (root / "NUS_WID_Tags" / f"{name}_Tags1k.dat").write_text("\n".join(lines) + "\n")
    for concept in NUS_CONCEPTS:
        values = rng.integers(0, 2, len(everything))
        (root / "AllLabels" / f"Labels_{concept}.txt").write_text(
            "\n".join(str(v) for v in values) + "\n")
    for i, entry in enumerate(everything):
        _jpeg(root / "Flickr" / entry.replace("\\", "/"), seed + i)
    vectors = [rng.normal(size=(len(NUS_TAGS), 300)), rng.normal(size=(len(NUS_CONCEPTS), 300))]
    with (root / "word_vectors.pkl").open("wb") as handle:
        pickle.dump(vectors, handle)
    return root


# -- Open Images V4 ------------------------------------------------------------------------
OI_CLASSES = {"/m/01": "Dog", "/m/02": "Cat", "/m/03": "Car", "/m/04": "Tree",
              "/m/05": "Boat", "/m/06": "Flower", "/m/07": "Bird", "/m/08": "Snow"}
OI_TRAINABLE = ["/m/01", "/m/02", "/m/04", "/m/06"]


def write_openimages(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes-trainable.txt").write_text("\n".join(OI_TRAINABLE) + "\n")
    with (root / "class-descriptions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(OI_CLASSES.items())
    for folder, count in (("train", 8), ("validation", 4), ("test", 6)):
        rows = []
        for i in range(count):
            image_id = f"{folder[:2]}{i:014x}"
            _jpeg(root / folder / f"{image_id}.jpg", seed + i)
            for mid in rng.choice(list(OI_CLASSES), size=3, replace=False):
                rows.append([image_id, "verification", mid, int(rng.integers(0, 2))])
        with (root / folder / f"{folder}-annotations-human-imagelabels.csv").open(
                "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ImageID", "Source", "LabelName", "Confidence"])
            writer.writerows(rows)
    return root


# -- VOC 2007 COCO export ------------------------------------------------------------------
VOC_NAMES = ["objects", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
             "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
             "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def write_voc(root: Path, n_train: int = 12, n_val: int = 4, corrupt: int = 1) -> Path:
    """A tiny export; the first `corrupt` train images are garbage bytes."""
    categories = [{"id": i, "name": n, "supercategory": "objects"} for i, n in
                  enumerate(VOC_NAMES)]
    for folder, count, offset in (("train", n_train, 0), ("val", n_val, 500)):
        images, annotations = [], []
        for i in range(count):
            name = f"{offset + i:06d}_jpg.rf.{i:04x}.jpg"
            path = root / "images" / folder / name
            if folder == "train" and i < corrupt:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\xff\xd8 this is not a jpeg")
            else:
                _jpeg(path, i)
            images.append({"id": i, "file_name": name, "height": 32, "width": 32})
            annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 20,
                                "bbox": [0, 0, 5, 5]})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(
            {"categories": categories, "images": images, "annotations": annotations}))
    return root


# -- emoji art (an npm node_modules tree in miniature) ---------------------------------------
EMOJI = [  # unified, category, openmoji tags
    ("1F436", "Animals & Nature", "dog, pet, animal, face"),
    ("1F431", "Animals & Nature", "cat, pet, animal, face"),
    ("1F697", "Travel & Places", "car, vehicle, red"),
    ("1F68C", "Travel & Places", "bus, vehicle, school"),
    ("1F34E", "Food & Drink", "apple, fruit, red"),
    ("1F34C", "Food & Drink", "banana, fruit, yellow, 10"),
    ("1F600", "Smileys & Emotion", "face, smile, happy, yellow"),
    ("2764-FE0F", "Smileys & Emotion", "heart, love, red"),
    ("1F1EB-1F1F7", "Flags", "flag, france"),
    ("0023-FE0F-20E3", "Symbols", "keycap, hash"),
]


def write_emoji_modules(root: Path) -> Path:
    """emoji-datasource-{google,twitter} (emoji.json + 64 px PNGs) and openmoji (json + SVG)."""
    source, openmoji = [], []
    for k, (code, category, tags) in enumerate(EMOJI):
        image = code.lower() + ".png"
        entry = {"unified": code, "image": image, "category": category, "name": f"E{k}",
                 "subcategory": "keycap" if "20E3" in code else "x",
                 "has_img_google": True, "has_img_twitter": True}
        if code == "1F436":
            entry["skin_variations"] = {"1F3FB": {"unified": "1F436-1F3FB"}}
        source.append(entry)
        colour = tuple(int(v) for v in np.random.default_rng(k).integers(0, 256, 3))
        for style in ("google", "twitter"):
            path = root / f"emoji-datasource-{style}" / "img" / style / "64" / image
            path.parent.mkdir(parents=True, exist_ok=True)
            shade = colour if style == "google" else colour[::-1]
            Image.new("RGBA", (64, 64), (*shade, 255)).save(path)
        hexcode = code.replace("-FE0F", "") if code.startswith("2764") else code  # openmoji's own
        svg = root / "openmoji" / "color" / "svg" / f"{hexcode}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
                       f'<circle cx="36" cy="36" r="30" fill="rgb{colour}"/></svg>')
        openmoji.append({"hexcode": hexcode, "group": category.split()[0].lower(),
                         "skintone": "", "tags": tags})
    openmoji.append({"hexcode": "1F436-1F3FB", "group": "animals", "skintone": "1",
                     "tags": "dog, tone"})
    (root / "emoji-datasource-google" / "emoji.json").write_text(json.dumps(source))
    (root / "openmoji" / "data").mkdir(parents=True)
    (root / "openmoji" / "data" / "openmoji.json").write_text(json.dumps(openmoji))
    return root
