"""BiAM, bi-level attention (Narayan et al., ICCV 2021), method.md §3.

grid [B, C, h, w] ─► 3×3 conv → ReLU → BN  (h_r, 256 channels)
    ├─► region-contextualised block: 8-head self-attention over the R = h·w regions,
    │     residual, then a 1×1 FFN (256 → 512 → 256), residual               (e_r)
    └─► scene-contextualised block: q = v = LeakyReLU(1×1 conv(h_r)); channel gate
          σ(mean_R(q) ⊙ Linear(global feature)); c = gate ⊙ v; e_g = c + (3×3 conv → ReLU → BN)(c)
concat [e_r, e_g] ─► 1×1 conv → LeakyReLU(0.2) ─► regions [B, R, C'] (C' = 512)
score s_l = mean of the top-6 region scores ⟨e_r, W w_l⟩, W = Linear(D → C') with bias.

Which tap: the stride-16 one for the regions. The original runs on VGG-19's 14×14×512 grid,
which at 224 is the stride-16 tap (VGG19-BN pool4: 512×14×14; EfficientNet-Lite0:
112×14×14). Its scene block's global feature is VGG-19's fc7 (4096-d), computed from that
grid by pool5 + fc6 + fc7 of the frozen network; the backbones here expose no fc layers, so
the global feature is the average-pooled stride-32 tap (VGG19-BN 512-d, Lite0 320-d), the
same frozen network one stage deeper.

Departure: the original's BatchNorm uses `momentum=0.99` (TF's decay written in PyTorch's
convention, i.e. running stats ≈ the last batch); here PyTorch's default 0.1. The original's
`masked_fill(scores == 0, -1e9)` before the softmax (a no-op for real-valued scores) is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import register_head
from models.heads.evidence import add_evidence_input, append_evidence, append_labels
from models.heads.ml2p import TRANSFORM_CONFIGS


class ConvReluBN(nn.Sequential):
    """3×3 conv (with bias) → ReLU → BN, in that order (as the original's CONV3_3)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(),
                         nn.BatchNorm2d(cout, eps=1e-3))


class RegionContextBlock(nn.Module):
    """Multi-head self-attention over regions + residual, then FFN + residual (no LayerNorm)."""

    def __init__(self, channels: int, heads: int = 8, ffn: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)  # three 1×1 convs, fused
        self.proj = nn.Linear(channels, channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn or 2 * channels), nn.ReLU(),
                                 nn.Linear(ffn or 2 * channels, channels))
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, r, c = x.shape  # [B, R, C]
        q, k, v = self.qkv(x).view(b, r, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5  # [B, H, R, R]
        y = self.attn_drop(attn.softmax(dim=-1)) @ v  # [B, H, R, C/H]
        x = x + self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, r, c)))
        return x + self.ffn(x)  # [B, R, C]


class SceneContextBlock(nn.Module):
    """Channel gate from the global feature, applied to the (shared) region query/value."""

    def __init__(self, channels: int, global_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.channel_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.global_proj = nn.Linear(global_channels, channels)  # w_g
        self.global_drop = nn.Dropout(dropout)
        self.refine = ConvReluBN(channels, channels)

    def forward(self, h: torch.Tensor, global_feature: torch.Tensor) -> torch.Tensor:
        v = F.leaky_relu(self.channel_conv(h), 0.2)  # [B, C, h, w]; the query is the same map
        k = self.global_proj(self.global_drop(global_feature))  # [B, C]
        gate = torch.sigmoid(v.mean(dim=(2, 3)) * k)  # [B, C]
        c = gate[:, :, None, None] * v  # [B, C, h, w]
        return c + self.refine(c)


@register_head("biam")
class BiAMHead(nn.Module):
    """Stride-16 grid (+ pooled stride-32 global feature) → region features [B, R, C'].

    Args:
        backbone: names the tap channels (`TRANSFORM_CONFIGS[backbone].in_channels`).
        dim: D, the label space.
        channels: width of both context blocks (paper: 256).
        width: C', the fused region feature (paper: 512).
        heads: attention heads of the region block (paper: 8).
        top_k: regions averaged per label score (paper: 6).
        tap / global_tap: region tap (default stride 16) and global-feature tap (stride 32).
        in_channels / global_channels: override the channels of those taps.
        imagenet_evidence_dim / evidence_exclude: the ImageNet-evidence input
            (`models.heads.evidence`; 0 = visual features only), in label space: its vector
            is appended to every feature, and each label's classifier gets w_l appended, so
            every score gains ⟨evidence, w_l⟩.
        input_size: accepted for the tagger's uniform call; unused (any grid with ≥ top_k).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", dim: int = 300,
                 channels: int = 256, width: int = 512, heads: int = 8, top_k: int = 6,
                 tap: int = 1, global_tap: int = 2, in_channels: int | None = None,
                 global_channels: int | None = None, dropout: float = 0.1,
                 input_size: int | None = None, imagenet_evidence_dim: int = 0,
                 evidence_exclude: tuple[int, ...] = ()) -> None:
        super().__init__()
        add_evidence_input(self, imagenet_evidence_dim, dim, evidence_exclude)
        cin = in_channels or TRANSFORM_CONFIGS[backbone].in_channels[tap]
        cglobal = global_channels or TRANSFORM_CONFIGS[backbone].in_channels[global_tap]
        self.tap, self.global_tap, self.top_k, self.dim, self.width = (
            tap, global_tap, top_k, dim, width)
        self.stem = ConvReluBN(cin, channels)
        self.region_block = RegionContextBlock(channels, heads, 2 * channels, dropout)
        self.scene_block = SceneContextBlock(channels, cglobal)
        self.fuse = nn.Conv2d(2 * channels, width, kernel_size=1)
        self.classifier = nn.Linear(dim, width)  # W: labels → region-feature space

    def forward(self, taps: tuple[torch.Tensor, ...],
                imagenet_logits: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(taps[self.tap])  # [B, C, h, w]
        b, c, hh, ww = h.shape
        e_r = self.region_block(h.flatten(2).transpose(1, 2))  # [B, R, C]
        e_r = e_r.transpose(1, 2).reshape(b, c, hh, ww)
        e_g = self.scene_block(h, taps[self.global_tap].mean(dim=(2, 3)))  # [B, C, h, w]
        e = F.leaky_relu(self.fuse(torch.cat([e_r, e_g], dim=1)), 0.2)  # [B, C', h, w]
        regions = e.flatten(2).transpose(1, 2)  # [B, R, C']
        return append_evidence(self, regions, imagenet_logits)  # [B, R, C'(+D)]

    def region_scores(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, R, C'(+D)] × [L, D] → [B, R, L]."""
        w = append_labels(self, self.classifier(labels), labels)  # [L, C'(+D)]
        return torch.einsum("brc,lc->brl", out, w)

    def score(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, R, C'] × [L, D] → [B, L]: mean of the top-k region scores per label."""
        m = self.region_scores(out, labels)
        return m.topk(min(self.top_k, m.shape[1]), dim=1).values.mean(dim=1)
