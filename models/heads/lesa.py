"""LESA, shared multi-attention (Huynh & Elhamifar, CVPR 2020), method.md §3.

grid F [B, C, h, w] ─► 2×2 conv ('SAME') + BN + ReLU ─► regions [B, R, C']
    ─► K shared attention maps α = softmax_R(W₂ · tanh(W₁ · F)) [B, K, R]
    ─► K attended features f_k = Σ_r α_kr F_r  [B, K, C']
score s_l = max_k ⟨f_k, W w_l⟩ with W: Linear D → C' (no bias) applied to the labels.

Which tap: the stride-16 one. The original attends over VGG-19's 14×14×512 conv5_4 grid; at
224 the stride-16 tap is that grid (VGG19-BN pool4: 512×14×14; EfficientNet-Lite0:
112×14×14), whereas stride 32 gives only 7×7 = 49 regions for 10 attention maps.
The conv keeps the original's width C' = 512 on both backbones (`width`), so the attention
and the label classifier have the original's size whatever the tap width.

The loss (`models.baseline_losses.lesa_loss`) needs the attention logits and the mean-pooled
region feature; every forward leaves them in `self.aux` (`attention_logits` [B, K, R],
`global` [B, C'(+D)]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import register_head
from models.heads.evidence import add_evidence_input, append_evidence, append_labels
from models.heads.ml2p import TRANSFORM_CONFIGS


@register_head("lesa")
class LESAHead(nn.Module):
    """Stride-16 grid → K attended features [B, K, C'].

    Args:
        backbone: names the tap channels (`TRANSFORM_CONFIGS[backbone].in_channels`).
        dim: D, the label space.
        attentions: K shared attention maps (paper: 10).
        width: C', the 2×2 conv's output channels (paper: 512).
        tap: which tap (default 1 = stride 16).
        in_channels: override the channels of the chosen tap.
        imagenet_evidence_dim / evidence_exclude: the ImageNet-evidence input
            (`models.heads.evidence`; 0 = visual features only), in label space: its vector
            is appended to every feature, and each label's classifier gets w_l appended, so
            every score gains ⟨evidence, w_l⟩.
        input_size: accepted for the tagger's uniform call; unused (any grid size works).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", dim: int = 300,
                 attentions: int = 10, width: int = 512, tap: int = 1,
                 in_channels: int | None = None, input_size: int | None = None,
                 imagenet_evidence_dim: int = 0, evidence_exclude: tuple[int, ...] = ()) -> None:
        super().__init__()
        add_evidence_input(self, imagenet_evidence_dim, dim, evidence_exclude)
        self.tap, self.dim, self.attentions, self.width = tap, dim, attentions, width
        cin = in_channels or TRANSFORM_CONFIGS[backbone].in_channels[tap]
        # TF-slim conv2d + batch_normalization: no conv bias, BN decay 0.99 / eps 1e-3
        self.conv = nn.Conv2d(cin, width, kernel_size=2, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=1e-3, momentum=0.01)
        self.att_hidden = nn.Linear(width, width)  # W₁ (with bias: the "augment 1" column)
        self.att_out = nn.Linear(width, attentions)  # W₂
        self.classifier = nn.Linear(dim, width, bias=False)  # W: labels → feature space
        self.aux: dict[str, torch.Tensor] = {}

    def forward(self, taps: tuple[torch.Tensor, ...],
                imagenet_logits: torch.Tensor | None = None) -> torch.Tensor:
        x = F.pad(taps[self.tap], (0, 1, 0, 1))  # TF 'SAME' for an even kernel: pad right/bottom
        x = F.relu(self.bn(self.conv(x)))  # [B, C', h, w]
        regions = x.flatten(2).transpose(1, 2)  # [B, R, C']
        logits = self.att_out(torch.tanh(self.att_hidden(regions))).transpose(1, 2)  # [B, K, R]
        attended = logits.softmax(dim=-1) @ regions  # [B, K, C']
        out = append_evidence(self, attended, imagenet_logits)  # [B, K, C'(+D)]
        # the pooled feature scored like the attended ones, so with the same evidence appended
        pooled = torch.cat([regions.mean(dim=1), out[:, 0, self.width:]], dim=-1)  # [B, C'(+D)]
        self.aux = {"attention_logits": logits, "global": pooled}  # [B, K, R], [B, C'(+D)]
        return out

    def classifiers(self, labels: torch.Tensor) -> torch.Tensor:
        """[L, D] → [L, C'(+D)]: W w_l (with w_l appended when there is evidence)."""
        return append_labels(self, self.classifier(labels), labels)

    def attention_scores(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, K, C'] × [L, D] → [B, K, L]: every attended feature against every label."""
        return torch.einsum("bkc,lc->bkl", out, self.classifiers(labels))

    def score(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, K, C'] × [L, D] → [B, L]: the best attended feature per label."""
        return self.attention_scores(out, labels).amax(dim=1)
