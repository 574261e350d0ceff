"""Training recipes: `NAME.json` beside this file, each a full recipe or an override set
(`{"base": NAME, "description": ..., "set": {dotted.key: value}}`) over another one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

RECIPES = Path(__file__).parent
# what a head may read besides the backbone's taps (method.md §3; `TrainConfig.regime`)
REGIMES = ("visual", "imagenet-strict", "imagenet-all")
REGIME_NAMES = {"visual": "(a) visual features only",
                "imagenet-strict": "(b) with ImageNet evidence, strict",
                "imagenet-all": "(b) with ImageNet evidence, all classes"}


def load_recipe(name_or_path: str) -> dict:
    """A training recipe by name (models/recipes/NAME.json) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
        raise SystemExit(f"no recipe {name_or_path!r} (expected a JSON file; known: {known})")
    recipe = json.loads(path.read_text())
    if "base" in recipe:  # an override set: {"base": NAME, "description": ..., "set": {...}}
        base = load_recipe(recipe["base"])
        return apply_override_dict(base, recipe.get("set", {}))
    return recipe


def apply_override_dict(recipe: dict, overrides: dict) -> dict:
    """Dotted-key overrides (`{"model.head_kwargs.groups": 3}`) applied to a copy of `recipe`."""
    recipe = copy.deepcopy(recipe)
    for key, value in overrides.items():
        target = recipe
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = copy.deepcopy(value)
    return recipe


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`key=value` / `model.dim=64` overrides; values parsed as JSON when they parse."""
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = recipe
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return recipe
