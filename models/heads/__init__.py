"""Head registry. A head maps backbone taps (and optionally ImageNet logits) to the image-side
output, and scores it against transformed, L2-normalised label vectors.

Interface (docs/contracts.md): `forward(taps, imagenet_logits=None) -> Tensor`,
`score(image_out, labels [L, D]) -> [B, L]`, attribute `uses_imagenet_logits: bool`.
Register with `@register_head("name")`; build with `create_head(name, **kwargs)`.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str) -> Callable:
    def wrap(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    # every module in this package registers its heads on import (ml2p, baselines, ...)
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def head_class(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a head usually lives in the module of its name: import just that one
        importlib.import_module(f"{__name__}.{name}")
    if name not in _REGISTRY:
        _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown head {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_heads() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def create_head(name: str, **kwargs) -> nn.Module:
    return head_class(name)(**kwargs)


__all__ = ["available_heads", "create_head", "head_class", "register_head"]
