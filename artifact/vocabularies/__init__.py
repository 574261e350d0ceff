"""Built-in label sets, packaged as data files beside this module (read with importlib.resources).

`voc-20` (the 20 VOC 2007 classes as label texts, from `voc_classes.json`, which the voc2007
dataset also reads), `imagenet-1k` (the 1,000 ImageNet class names in index order, which the
trainer's ImageNet evidence also uses) and `nus-wide-81` (NUS-WIDE's 81 concepts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources


def read_json(name: str) -> dict:
    """A packaged JSON file, e.g. `voc_classes.json`."""
    return json.loads(_read(name))


def read_lines(name: str) -> list[str]:
    """A packaged text file's non-empty lines, stripped."""
    return [line.strip() for line in _read(name).splitlines() if line.strip()]


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


BUILTIN: dict[str, Callable[[], list[str]]] = {
    "nus-wide-81": lambda: read_lines("nus_wide_81.txt"),
    "voc-20": lambda: [c["label"] for c in read_json("voc_classes.json")["classes"]],
    "imagenet-1k": lambda: read_lines("imagenet_classes.txt"),
}
