"""Fast0Tag (Zhang, Gong & Shah, CVPR 2016): one "principal direction" per image (method.md §3).

pooled image feature [B, C] ─► MLP (Linear → ReLU → Dropout)* → Linear ─► f(x) [B, 1, D]
score s_l = ⟨f(x), w_l⟩; trained with RankNet `log(1 + exp(s_n − s_p))` (baseline_losses).
With ImageNet evidence (regime (b)) its vector is added to f(x), as ML2P adds it to its groups.

Which tap: the original maps a *global* image feature (VGG-19 fc7, 4096-d) to the word space,
so the default is the global average pool of the stride-32 tap — the deepest, most semantic
map, which fc7 itself is computed from (VGG19-BN: 512-d pool5; EfficientNet-Lite0: 320-d).
`tap=1` uses the stride-16 tap instead (the grid LESA / BiAM attend over), for ablation.
The hidden widths are a setting (the paper's exact MLP is not restated in method.md); the
default is one hidden layer of 1024 units.
"""

from __future__ import annotations

import torch
from torch import nn

from models.heads import register_head
from models.heads.evidence import add_evidence_input, evidence_vector
from models.heads.ml2p import TRANSFORM_CONFIGS


@register_head("fast0tag")
class Fast0TagHead(nn.Module):
    """Global-pooled tap → MLP → principal direction f(x) [B, 1, D].

    Args:
        backbone: names the tap channels (`TRANSFORM_CONFIGS[backbone].in_channels`).
        dim: D, the label space.
        tap: which tap to pool (0/1/2 = stride 8/16/32; default 2).
        hidden: hidden layer widths (ReLU + dropout after each).
        dropout: dropout probability after each hidden layer.
        in_channels: override the channels of the chosen tap.
        input_size: accepted for the tagger's uniform call; unused (pooling is global).
        imagenet_evidence_dim / evidence_exclude: the ImageNet-evidence input
            (`models.heads.evidence`; 0 = visual features only).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", dim: int = 300, tap: int = 2,
                 hidden: tuple[int, ...] = (1024,), dropout: float = 0.1,
                 in_channels: int | None = None, input_size: int | None = None,
                 imagenet_evidence_dim: int = 0, evidence_exclude: tuple[int, ...] = ()) -> None:
        super().__init__()
        add_evidence_input(self, imagenet_evidence_dim, dim, evidence_exclude)
        self.tap, self.dim = tap, dim
        width = in_channels or TRANSFORM_CONFIGS[backbone].in_channels[tap]
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, taps: tuple[torch.Tensor, ...],
                imagenet_logits: torch.Tensor | None = None) -> torch.Tensor:
        f = self.mlp(taps[self.tap].mean(dim=(2, 3)))  # [B, D]
        if self.evidence is not None:
            f = f + evidence_vector(self, imagenet_logits)
        return f.unsqueeze(1)  # [B, 1, D]

    @staticmethod
    def score(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, 1, D] × [L, D] → [B, L]: dot product with the principal direction."""
        return torch.einsum("bgd,ld->bgl", out, labels).amax(dim=1)
