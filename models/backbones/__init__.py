"""Backbone registry: every backbone returns three taps at strides 8/16/32.

`create_backbone(name)` builds one by name; a backbone module registers itself with
`@register_backbone("name")`. See docs/contracts.md for the `Backbone` interface.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class Backbone(nn.Module):
    """Interface: `forward(x) -> (t8, t16, t32)`, `forward_all`, `classify`, `tap_channels`."""

    name: str = ""
    tap_channels: tuple[int, int, int] = (0, 0, 0)
    has_classifier: bool = False

    def forward_all(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000]."""
        logits = self.forward_all(x)[3]
        if logits is None:
            raise NotImplementedError(f"backbone {self.name!r} has no ImageNet classifier")
        return logits


def register_backbone(name: str) -> Callable:
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_backbones() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, random_init: bool = False
) -> Backbone:
    """Build backbone `name` with ImageNet weights (packaged, or from the path `weights`).

    `random_init=True` (or `pretrained=False`) gives untrained weights, for tests and shape checks.
    """
    _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; available: {sorted(_REGISTRY)}")
    random_init = random_init or not pretrained
    return _REGISTRY[name](weights=weights, random_init=random_init)


def _import_all() -> None:
    # import for the side effect of registration; kept lazy so `models.backbones` is cheap
    from models.backbones import efficientnet_lite0, vgg19_bn  # noqa: F401


__all__ = ["Backbone", "available_backbones", "create_backbone", "register_backbone"]
