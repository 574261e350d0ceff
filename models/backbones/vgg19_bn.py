"""VGG19 with batch norm, the paper's backbone, in torchvision's `vgg19_bn.features` layout.

`features` is an `nn.Sequential` with torchvision's indices, so the `features.*` keys of a
torchvision state dict (e.g. `vgg19_bn-c79401a0.pth`) load by index. Taps are taken right after
pool3 / pool4 / pool5: 256×28², 512×14², 512×7² at 224. No weights ship with the package: pass a
path, or ask for `random_init=True` explicitly.
"""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import Backbone, register_backbone

# torchvision's config "E" with batch norm: numbers are conv widths, "M" a 2×2 max-pool
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def make_features(cfg: tuple[int | str, ...] = VGG19_CFG) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1),
                       nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


def make_classifier(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's VGG classifier (indices 0..6), used only when the weights carry it."""
    return nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes),
    )


class VGG19BN(Backbone):
    name = "vgg19_bn"
    tap_channels = (256, 512, 512)

    def __init__(self, weights: str | None = None, random_init: bool = False) -> None:
        super().__init__()
        if weights is None and not random_init:
            raise ValueError(
                "vgg19_bn needs ImageNet weights, which are not packaged: pass "
                "weights=<path to a torchvision vgg19_bn state dict, e.g. vgg19_bn-c79401a0.pth> "
                "or random_init=True for an untrained network"
            )
        self.features = make_features()
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.tap_indices = tuple(pools[2:5])  # pool3, pool4, pool5 = (26, 39, 52)
        self.classifier: nn.Sequential | None = None
        if weights is not None:
            self.load_torchvision(weights)

    @property
    def has_classifier(self) -> bool:  # type: ignore[override]
        return self.classifier is not None

    def load_torchvision(self, path: str) -> None:
        """Load `features.*` (and `classifier.*` when present) of a torchvision state dict."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not feats:  # a bare `features` state dict ("0.weight", ...)
            feats = {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
        if not feats:
            raise ValueError(f"{path}: no vgg19_bn `features.*` keys found")
        self.features.load_state_dict(feats, strict=True)
        cls = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
        if cls:
            self.classifier = make_classifier()
            self.classifier.load_state_dict(cls, strict=True)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.tap_indices:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t8, t16, t32 = self._trunk(x)  # [B,256,H/8,W/8], [B,512,H/16,..], [B,512,H/32,..]
        return t8, t16, t32

    def forward_all(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        t8, t16, t32 = self._trunk(x)
        logits = None
        if self.classifier is not None:
            pooled = nn.functional.adaptive_avg_pool2d(t32, 7).flatten(1)  # [B, 25088]
            logits = self.classifier(pooled)
        return t8, t16, t32, logits


@register_backbone("vgg19_bn")
def vgg19_bn(weights: str | None = None, random_init: bool = False) -> VGG19BN:
    return VGG19BN(weights=weights, random_init=random_init)
