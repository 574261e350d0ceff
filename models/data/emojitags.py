"""EmojiTags: synthetic multi-label scenes of emoji art, labelled with emoji keywords.

Built offline (``build_emojitags``, CLI ``ml2p data emojitags``) in three separate steps:

1. ``fetch_art`` — the ordinary npm client installs the pinned art packages into
   ``<cache>/npm``: ``emoji-datasource-google`` (Noto Emoji, 64 px PNGs),
   ``emoji-datasource-twitter`` (Twemoji, 64 px PNGs) and ``openmoji`` (SVG only, rasterised
   here with resvg; the package ships no PNGs).
2. ``read_catalog`` — the emoji kept (no flags, symbols, keycaps, components or skin-tone
   variants; art in all three styles) with their keywords: openmoji's ``data/openmoji.json``
   ``tags``, matched by code point. Labels are keywords that occur for >= 2 emoji.
3. ``generate_scenes`` — 224x224 scenes of 1-4 emoji at random scale, rotation, position
   and overlap on solid / gradient / noise backgrounds; labels = union of the emoji's
   keywords. Deterministic for a seed; every split draws its own scenes (its own random
   stream), so no two splits share a scene.

Protocol versions (``VERSION``; recorded in ``labels.json`` and in every result):
- **v2** (default): train, val and ``test`` scenes all use the training art styles (google +
  twitter) — only the labels are unseen, as in NUS-WIDE; ``test-shift`` holds the scenes in
  the held-out openmoji style (identical to v1's ``test``), reported as *style shift*.
- v1: ``test`` was the openmoji scenes (``ml2p data emojitags --version 1``).

The unseen labels (~10 %) are drawn once with a fixed seed and committed as
``models/assets/emojitags_split.json``; the 20 VOC label texts never enter the draw and the
VOC unseen labels that are keywords are forced unseen. The result lives outside the
repository (``$ML2P_CACHE_DIR/emojitags``, default ``~/.cache/ml2p/emojitags``) as PNG files
plus ``labels.json``; ``load_dataset("emojitags", split)`` reads it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.base import (
    MultiLabelDataset,
    cache_root,
    register,
    require,
    resolve_root,
)

log = logging.getLogger(__name__)

NPM_PACKAGES = {
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "openmoji": "17.0.0",
}
TRAIN_STYLES = ("google", "twitter")
TEST_STYLES = ("openmoji",)  # the held-out style: v2's test-shift split (v1's test)
VERSION = 2
SKIP_CATEGORIES = {"Flags", "Symbols", "Component"}
SKIP_OPENMOJI_GROUPS = {"flags", "symbols", "component", "extras-openmoji", "extras-unicode"}
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
SPLIT_FILE = Path(__file__).resolve().parents[1] / "assets" / "emojitags_split.json"
ENV_ROOT = "ML2P_EMOJITAGS_ROOT"
SCENE_SIZE = 224
# Direct synonyms of VOC label texts: those of seen VOC classes stay seen (kept out of the
# draw), those of the unseen ones (car, dog, sofa, train) are forced unseen with them.
VOC_SYNONYMS = {
    "aeroplane": ("airplane", "plane"), "bicycle": ("bike",), "motorbike": ("motorcycle",),
    "tv monitor": ("tv", "television"), "car": ("automobile",), "sofa": ("couch",),
}
ART_SIZE = 128  # openmoji SVGs are rasterised at this size


def default_root() -> Path:
    return cache_root() / "emojitags"


# -- 1. fetching -------------------------------------------------------------------------
def fetch_art(npm_dir: Path | None = None) -> Path:
    """Install the pinned art packages with npm (once) and return their node_modules."""
    npm_dir = npm_dir or cache_root() / "npm"
    modules = npm_dir / "node_modules"
    if all(_installed_version(modules / name) == ver for name, ver in NPM_PACKAGES.items()):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the `npm` client is needed to fetch the emoji art (install Node.js)")
    npm_dir.mkdir(parents=True, exist_ok=True)
    if not (npm_dir / "package.json").exists():
        (npm_dir / "package.json").write_text('{"name": "ml2p-emoji-art", "private": true}\n')
    specs = [f"{name}@{ver}" for name, ver in NPM_PACKAGES.items()]
    log.info("fetching %s into %s", " ".join(specs), npm_dir)
    subprocess.run([npm, "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund",
                    "--ignore-scripts", *specs], check=True)
    return modules


def _installed_version(package: Path) -> str | None:
    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


# -- 2. catalog --------------------------------------------------------------------------
@dataclass
class Emoji:
    hexcode: str  # normalised: upper case, without FE0F
    name: str
    keywords: list[str]
    art: dict[str, Path] = field(default_factory=dict)  # style -> PNG or SVG file


def norm_hex(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def split_keywords(tags: str) -> list[str]:
    """Lower-cased, stripped, de-duplicated keywords; ones without a letter ("10", "<3") go."""
    words = (w.strip().lower().replace("\u2019", "'") for w in tags.split(","))
    return list(dict.fromkeys(w for w in words if any(c.isalpha() for c in w)))


def read_catalog(modules: Path) -> list[Emoji]:
    """The emoji with art in every style and >= 1 keyword, from an npm node_modules tree."""
    google = modules / "emoji-datasource-google"
    source = json.loads(require(google / "emoji.json", "emoji-datasource's emoji.json",
                                "run fetch_art() / `ml2p data emojitags`").read_text())
    om_json = require(modules / "openmoji" / "data" / "openmoji.json", "openmoji's data file")
    tags: dict[str, list[str]] = {}
    om_file: dict[str, str] = {}  # normalised code -> openmoji's own hexcode (its file name)
    for entry in json.loads(om_json.read_text(encoding="utf-8")):
        if entry.get("skintone") or entry.get("group") in SKIP_OPENMOJI_GROUPS:
            continue
        words = split_keywords(entry.get("tags") or "")
        if words:
            tags[norm_hex(entry["hexcode"])] = words
            om_file[norm_hex(entry["hexcode"])] = entry["hexcode"].upper()
    catalog = []
    for entry in source:
        code = norm_hex(entry["unified"])
        if (entry.get("category") in SKIP_CATEGORIES or entry.get("subcategory") == "keycap"
                or SKIN_TONES & set(code.split("-")) or code not in tags):
            continue
        art = {
            "google": google / "img" / "google" / "64" / entry["image"],
            "twitter": modules / "emoji-datasource-twitter" / "img" / "twitter" / "64"
            / entry["image"],
            "openmoji": modules / "openmoji" / "color" / "svg" / f"{om_file[code]}.svg",
        }
        if all(path.exists() for path in art.values()):
            catalog.append(Emoji(code, entry.get("name") or entry.get("short_name", ""),
                                 tags[code], art))
    return catalog


def label_vocabulary(catalog: list[Emoji], min_count: int = 2) -> list[str]:
    """Keywords that occur for at least `min_count` emoji, sorted."""
    counts = Counter(word for emoji in catalog for word in emoji.keywords)
    return sorted(word for word, count in counts.items() if count >= min_count)


def make_split(labels: list[str], seed: int = 0, fraction: float = 0.1,
               protected: list[str] = (), forced: list[str] = ()) -> dict:
    """Choose the unseen labels: `forced` ones plus a seeded draw outside `protected`."""
    forced_in = sorted(set(forced) & set(labels))
    pool = sorted(set(labels) - set(protected) - set(forced_in))
    count = max(round(fraction * len(labels)) - len(forced_in), 0)
    rng = np.random.default_rng(seed)
    drawn = sorted(pool[i] for i in rng.choice(len(pool), size=count, replace=False))
    return {"seed": seed, "fraction": fraction, "labels": len(labels),
            "protected": sorted(set(protected) & set(labels)), "forced_unseen": forced_in,
            "unseen": sorted(set(drawn) | set(forced_in))}


def load_or_make_split(labels: list[str], split_file: Path, seed: int = 0) -> dict:
    """The committed split (made once, with VOC's labels protected and VOC unseen forced)."""
    if split_file.exists():
        split = json.loads(split_file.read_text(encoding="utf-8"))
        if split["labels"] != len(labels):
            log.warning("%s was made for %d labels, the catalog now has %d; keeping it",
                        split_file, split["labels"], len(labels))
        return split
    from models.data.voc2007 import voc_label_names, voc_unseen

    unseen = set(voc_unseen())
    forced = [w for name in unseen for w in (name, *VOC_SYNONYMS.get(name, ()))]
    protected = [w for name in voc_label_names() if name not in unseen
                 for w in (name, *VOC_SYNONYMS.get(name, ()))]
    split = make_split(labels, seed, protected=protected, forced=forced)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    log.info("wrote the EmojiTags unseen split to %s (%d unseen)", split_file, len(split["unseen"]))
    return split


# -- 3. scenes ---------------------------------------------------------------------------
def load_art(path: Path, size: int = ART_SIZE) -> Image.Image:
    """An emoji as RGBA: PNGs as shipped, SVGs rasterised at `size` px."""
    if path.suffix.lower() == ".svg":
        return rasterise_svg(path, size)
    with Image.open(path) as image:
        return image.convert("RGBA")


def rasterise_svg(path: Path, size: int) -> Image.Image:
    try:
        import resvg_py
    except ImportError as exc:
        raise ImportError("rasterising openmoji's SVGs needs `pip install resvg-py`") from exc
    data = resvg_py.svg_to_bytes(svg_path=str(path), width=size, height=size,
                                 skip_system_fonts=True)
    return Image.open(io.BytesIO(bytes(data))).convert("RGBA")


def background(rng: np.random.Generator, size: int = SCENE_SIZE) -> Image.Image:
    """A solid colour, a linear gradient, or smooth colour noise."""
    kind = rng.integers(3)
    if kind == 0:
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        return Image.new("RGB", (size, size), tuple(int(c) for c in colour))
    if kind == 1:
        a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        t = (xs * math.cos(angle) + ys * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = a * (1 - t[..., None]) + b * t[..., None]
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    cells = int(rng.integers(2, 17))
    base = rng.integers(0, 256, 3)
    noise = rng.normal(base, rng.uniform(10, 70), (cells, cells, 3)).clip(0, 255)
    return Image.fromarray(noise.astype(np.uint8), "RGB").resize((size, size), Image.BICUBIC)


@dataclass(frozen=True)
class SceneLayout:
    """How emoji are placed in a scene; the defaults define EmojiTags (others are for
    diagnostics, e.g. which factor makes the openmoji test scenes hard)."""

    max_emoji: int = 4
    scale: tuple[float, float] = (0.22, 0.6)  # an emoji's side, as a fraction of the scene's
    max_rotation: float = 35.0  # degrees, either way
    plain_background: bool = False  # white instead of solid / gradient / noise


def render_scene(rng: np.random.Generator, art: list[Image.Image], size: int = SCENE_SIZE,
                 layout: SceneLayout = SceneLayout()) -> Image.Image:
    """Paste each RGBA emoji at a random scale, rotation and position (overlaps allowed)."""
    canvas = (Image.new("RGB", (size, size), "white") if layout.plain_background
              else background(rng, size)).convert("RGBA")
    for image in art:
        side = int(rng.uniform(*layout.scale) * size)
        sprite = image.resize((side, side), Image.BICUBIC)
        if layout.max_rotation:
            angle = float(rng.uniform(-layout.max_rotation, layout.max_rotation))
            sprite = sprite.rotate(angle, Image.BICUBIC, expand=True)
        w, h = sprite.size
        x = int(rng.integers(-w // 4, size - 3 * w // 4 + 1))
        y = int(rng.integers(-h // 4, size - 3 * h // 4 + 1))
        canvas.alpha_composite(sprite, (max(x, 0), max(y, 0)),
                               (max(-x, 0), max(-y, 0)))
    return canvas.convert("RGB")


def split_plan(version: int) -> dict[str, tuple[int, tuple[str, ...]]]:
    """split -> (its random stream's code, art styles) in a protocol version; the openmoji
    scenes keep code 3 in both (v1's test = v2's test-shift, scene for scene)."""
    if version == 1:
        return {"train": (1, TRAIN_STYLES), "val": (2, TRAIN_STYLES), "test": (3, TEST_STYLES)}
    if version == 2:
        return {"train": (1, TRAIN_STYLES), "val": (2, TRAIN_STYLES),
                "test": (4, TRAIN_STYLES), "test-shift": (3, TEST_STYLES)}
    raise ValueError(f"unknown EmojiTags version {version} (1 or 2)")


def generate_scenes(catalog: list[Emoji], labels: list[str], out_dir: Path, split: str,
                    count: int, seed: int = 0, layout: SceneLayout = SceneLayout(),
                    version: int = VERSION) -> list[dict]:
    """Write `count` scenes of `split` as PNGs under out_dir/split; return their records."""
    code, styles = split_plan(version)[split]
    column = {label: i for i, label in enumerate(labels)}
    usable = [e for e in catalog if any(k in column for k in e.keywords)]
    art_cache: dict[tuple[int, str], Image.Image] = {}
    folder = out_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        rng = np.random.default_rng([seed, code, index])
        n_emoji = int(rng.integers(1, layout.max_emoji + 1))
        chosen = rng.choice(len(usable), size=n_emoji, replace=False)
        art = []
        for pick in chosen:
            style = styles[int(rng.integers(len(styles)))]
            key = (int(pick), style)
            if key not in art_cache:
                art_cache[key] = load_art(usable[pick].art[style])
            art.append(art_cache[key])
        scene = render_scene(rng, art, layout=layout)
        name = f"{split}/{index:05d}.png"
        scene.save(out_dir / name, compress_level=1)
        keywords = {k for pick in chosen for k in usable[pick].keywords if k in column}
        records.append({"file": name, "emoji": [usable[p].hexcode for p in chosen],
                        "labels": sorted(column[k] for k in keywords)})
    return records


def build_emojitags(out_dir: str | Path | None = None, seed: int = 0, n_train: int = 4000,
                    n_val: int = 600, n_test: int = 1000, modules: Path | None = None,
                    split_file: Path = SPLIT_FILE, version: int = VERSION) -> Path:
    """Fetch the art (unless `modules` is given), then write the dataset (protocol `version`)
    to `out_dir`; each test split gets `n_test` scenes.

    Returns the dataset directory (default ``$ML2P_CACHE_DIR/emojitags``).
    """
    out = Path(out_dir) if out_dir is not None else default_root()
    started = time.perf_counter()
    modules = modules or fetch_art()
    catalog = read_catalog(modules)
    labels = label_vocabulary(catalog)
    catalog = [e for e in catalog if set(e.keywords) & set(labels)]
    split = load_or_make_split(labels, split_file, seed=0)
    log.info("EmojiTags: %d emoji, %d labels, %d unseen", len(catalog), len(labels),
             len(split["unseen"]))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    splits, timings = {}, {}
    plan = split_plan(version)
    counts = {"train": n_train, "val": n_val, "test": n_test, "test-shift": n_test}
    for name in plan:
        count = counts[name]
        tick = time.perf_counter()
        splits[name] = generate_scenes(catalog, labels, out, name, count, seed, version=version)
        timings[name] = round(time.perf_counter() - tick, 1)
        log.info("EmojiTags %s: %d scenes in %.1fs", name, count, timings[name])
    meta = {
        "version": version, "seed": seed, "packages": NPM_PACKAGES, "emoji": len(catalog),
        "label_names": labels, "unseen": [u for u in split["unseen"] if u in set(labels)],
        "styles": {name: styles for name, (_, styles) in plan.items()},
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
        "splits": splits,
    }
    (out / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


# -- loader ------------------------------------------------------------------------------
def read_meta(root: str | Path | None = None) -> dict:
    """A built dataset's ``labels.json`` (its ``version`` is 1 when the file predates it)."""
    base = resolve_root(root, ENV_ROOT, default_root())
    meta_path = require(base / "labels.json", "a built EmojiTags dataset (labels.json + PNGs)",
                        "build it with `ml2p data emojitags`")
    return {"version": 1, **json.loads(meta_path.read_text(encoding="utf-8"))}


@register("emojitags", extra_splits=("test-shift",))
def load_emojitags(split: str, root: str | Path | None = None) -> MultiLabelDataset:
    """A built EmojiTags split; root from the argument, ``ML2P_EMOJITAGS_ROOT`` or the cache."""
    base = resolve_root(root, ENV_ROOT, default_root())
    meta = read_meta(base)
    names = meta["label_names"]
    if split not in meta["splits"]:
        raise ValueError(f"EmojiTags v{meta['version']} at {base} has no {split!r} split "
                         f"(it has {', '.join(meta['splits'])}; `ml2p data emojitags` builds "
                         f"v{VERSION})")
    records = meta["splits"][split]
    targets = np.zeros((len(records), len(names)), dtype=np.int8)
    for row, record in enumerate(records):
        targets[row, record["labels"]] = 1
    unseen = set(meta["unseen"])
    seen = np.array([n not in unseen for n in names])
    return MultiLabelDataset("emojitags", split, [base / r["file"] for r in records], targets,
                             names, seen, [Path(r["file"]).stem for r in records])
