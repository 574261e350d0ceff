"""(ML)²P-Encoder head (Liu et al., CVPR 2023), as the released code (method.md §1 steps 2-8).

taps ─► feature transform to a common grid ─► 1×1 embedding to G·D ─► channel shuffle
     ─► channel-class attention (G heads) ─► Mixer block ─► max over positions, sigmoid
     ─► [+ optional ImageNet evidence] ─► group attention ─► S [B, G, D]
score(S, w) = max_g ⟨S_g, w⟩.

`residual=False` is the released code (no residual, no output projection in the attention);
`residual=True` is the poster's `F̂ = F + Att(F)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import register_head
from models.heads.evidence import add_evidence_input, evidence_vector


@dataclass(frozen=True)
class TransformConfig:
    """Per-backbone feature transform: tap channels in, widths out, max-pool to the 1/32 grid."""

    in_channels: tuple[int, int, int]
    widths: tuple[int, int, int]
    pools: tuple[int, int, int] = (4, 2, 1)


TRANSFORM_CONFIGS: dict[str, TransformConfig] = {
    # the paper: 256/512/512 → 512/512/1024, concatenated to 2048
    "vgg19_bn": TransformConfig((256, 512, 512), (512, 512, 1024)),
    # Lite0 taps are much narrower (40/112/320); widen ~3x / 2x / 1.6x to 896 channels
    "efficientnet_lite0": TransformConfig((40, 112, 320), (128, 256, 512)),
}


class TapTransform(nn.Sequential):
    """1×1 conv (no bias) → BN → ReLU → max-pool k/k (BasicMaxPooling in the released code)."""

    def __init__(self, cin: int, cout: int, pool: int) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size=1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01),
            nn.ReLU(),
        ]
        if pool > 1:
            layers.append(nn.MaxPool2d(kernel_size=pool, stride=pool))
        super().__init__(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, G·D, H, W] → [B, D·G, H, W]: new channel d·G + g holds old channel g·D + d."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelClassAttention(nn.Module):
    """Transposed (channel × channel) attention per head, one head per group (Restormer-like).

    Faithful: no residual and no output projection (the released code builds `project_out`
    but never calls it; it is left out here, so it is not counted either).
    """

    def __init__(self, groups: int, dim: int, residual: bool = False) -> None:
        super().__init__()
        self.groups, self.dim, self.residual = groups, dim, residual
        width = groups * dim
        self.temperature = nn.Parameter(torch.ones(groups, 1, 1))
        self.qkv = nn.Conv2d(width, 3 * width, kernel_size=1)
        self.qkv_dw = nn.Conv2d(3 * width, 3 * width, kernel_size=3, padding=1, groups=3 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape  # [B, G·D, H, W]
        g, d, n = self.groups, self.dim, h * w
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)  # 3 × [B, G·D, H, W]
        q = F.normalize(q.reshape(b, g, d, n), dim=-1)  # [B, G, D, N]
        k = F.normalize(k.reshape(b, g, d, n), dim=-1)
        v = v.reshape(b, g, d, n)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # [B, G, D, D]
        out = attn.softmax(dim=-1) @ v  # [B, G, D, N]
        if self.residual:
            out = out + x.reshape(b, g, d, n)
        return out


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class MixerBlock(nn.Module):
    """One MLP-Mixer block on [B, G, N, D]; both LayerNorms are over D (as the released code)."""

    def __init__(self, dim: int, tokens: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = Mlp(tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, channel_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(-2, -1)).transpose(-2, -1)  # [B,G,N,D]
        return x + self.channel_mlp(self.norm2(x))


class GroupAttention(nn.Module):
    """S = (MLP₁(x) · MLP₂(x)ᵀ) · x between the G vectors; no softmax, no scaling (as
    released). `softmax=True` weighs the G vectors by softmax(MLP₁(x) · MLP₂(x)ᵀ / √hidden)
    instead: the released form's unbounded weights let the output grow without limit during
    training (in `ml2p bench select`, runs that collapse below a random ranking)."""

    def __init__(self, dim: int, hidden: int, softmax: bool = False) -> None:
        super().__init__()
        self.query = Mlp(dim, hidden)
        self.key = Mlp(dim, hidden)
        self.scale = hidden ** -0.5 if softmax else None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, G, D] → the [B, G, G] matrix that mixes the G vectors."""
        att = self.query(x) @ self.key(x).transpose(-2, -1)  # [B, G, G]
        if self.scale is not None:
            att = (att * self.scale).softmax(dim=-1)
        return att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x) @ x  # [B, G, D]


@register_head("ml2p")
class ML2PHead(nn.Module):
    """(ML)²P-Encoder head: taps → G principal vectors S [B, G, D] in label space.

    Args:
        backbone: key of `TRANSFORM_CONFIGS`; supplies tap channels and default widths.
        groups, dim: G and D (paper: 7, 300).
        widths / pools / in_channels: override the backbone's feature-transform config.
        input_size: image side; the grid is input_size // 32 and the token MLP acts over
            tokens = grid² positions (49 at 224). `tokens` overrides it.
        token_hidden: token-MLP width (default tokens // channel_reduction = 9 at 49).
        channel_reduction: channel-MLP width is D // channel_reduction (paper: 5).
        group_hidden: hidden width of the two group-attention MLPs (default D, as released).
        residual: False = released code (faithful); True = poster variant.
        group_softmax: False = released group attention (faithful); True = softmax-weighted
            (scaled) group attention, which trains stably (see `GroupAttention`).
        imagenet_evidence_dim: 0 = off (faithful). >0: the backbone's ImageNet class
            probabilities softmax(logits) [B, C] are mapped by a zero-initialised Linear C→D and
            added to every pooled group vector before group attention, so training starts from
            the plain encoder and learns how much of the classifier's evidence to use
            (`models.heads.evidence`, shared by every head).
        evidence_exclude: ImageNet class indices removed from that evidence (regime (b),
            strict variant).
        cosine_scale: 0 = off (faithful: raw dot products, whose scale varies per image). >0:
            each group vector is L2-normalised and multiplied by this, so a score is a scaled
            cosine and comparable across images (what per-label mAP ranks).
    """

    def __init__(
        self,
        backbone: str = "vgg19_bn",
        groups: int = 7,
        dim: int = 300,
        widths: tuple[int, int, int] | None = None,
        pools: tuple[int, int, int] | None = None,
        in_channels: tuple[int, int, int] | None = None,
        input_size: int = 224,
        tokens: int | None = None,
        token_hidden: int | None = None,
        channel_reduction: int = 5,
        group_hidden: int | None = None,
        residual: bool = False,
        imagenet_evidence_dim: int = 0,
        evidence_exclude: tuple[int, ...] = (),
        cosine_scale: float = 0.0,
        group_softmax: bool = False,
    ) -> None:
        super().__init__()
        base = TRANSFORM_CONFIGS.get(backbone)
        if base is None and (in_channels is None or widths is None):
            raise KeyError(f"no feature-transform config for backbone {backbone!r}; pass "
                           f"in_channels and widths, or use one of {sorted(TRANSFORM_CONFIGS)}")
        in_channels = tuple(in_channels or base.in_channels)
        widths = tuple(widths or base.widths)
        pools = tuple(pools or (base.pools if base else (4, 2, 1)))
        self.groups, self.dim, self.residual = groups, dim, residual
        self.tokens = tokens or (input_size // 32) ** 2
        self.imagenet_evidence_dim = imagenet_evidence_dim
        self.cosine_scale = cosine_scale

        self.transforms = nn.ModuleList(
            TapTransform(c, w, p) for c, w, p in zip(in_channels, widths, pools, strict=True)
        )
        self.embedding = nn.Conv2d(sum(widths), groups * dim, kernel_size=1)
        self.attention = ChannelClassAttention(groups, dim, residual=residual)
        self.mixer = MixerBlock(dim, self.tokens, token_hidden or self.tokens // channel_reduction,
                                dim // channel_reduction)
        self.group_attention = GroupAttention(dim, group_hidden or dim, softmax=group_softmax)
        add_evidence_input(self, imagenet_evidence_dim, dim, evidence_exclude)

    def forward(
        self,
        taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        imagenet_logits: torch.Tensor | None = None,
        explain: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S [B, G, D]; with `explain`, (S, positions [B, G, N, D], evidence [B, G, D]) as
        `relevance_terms` defines them."""
        x = torch.cat([t(f) for t, f in zip(self.transforms, taps, strict=True)], dim=1)
        x = channel_shuffle(self.embedding(x), self.groups)  # [B, G·D, h, w]
        b, _, h, w = x.shape
        if h * w != self.tokens:
            raise ValueError(f"ML2P head built for {self.tokens} positions, got a {h}×{w} grid; "
                             f"set input_size/tokens to match the image size")
        x = self.attention(x)  # [B, G, D, N]
        grid = self.mixer(x.transpose(-2, -1))  # [B, G, N, D]
        x = torch.sigmoid(grid.amax(dim=2))  # [B, G, D]
        evidence = None
        if self.uses_imagenet_logits:
            evidence = evidence_vector(self, imagenet_logits).unsqueeze(1)  # [B, 1, D]
            x = x + evidence  # [B, G, D]
        if explain:
            return self.relevance_terms(grid, x, evidence)
        x = self.group_attention(x)  # [B, G, D]
        if self.cosine_scale:
            x = F.normalize(x, dim=-1) * self.cosine_scale
        return x

    def relevance_terms(self, grid: torch.Tensor, pooled: torch.Tensor,
                        evidence: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The relevance map's terms (README "Relevance maps").

        grid [B, G, N, D]: the mixer's output per position; pooled [B, G, D]: the pooled
        pass's input to the group attention (sigmoid of the max, plus the evidence
        [B, 1, D] when the head has it). Holding the pooled pass's group-attention matrix A
        and normalisation n_g fixed, what reaches S_g is linear in its input:
        S_g = n_g Σ_h A_gh (sigmoid(max_n grid_h) + e). Returns (S, positions, evidence):
        positions[:, g, n] = n_g Σ_h A_gh sigmoid(grid_h,n), each position put in place of
        the pooled features; evidence[:, g] = n_g Σ_h A_gh e, the part with no position.
        So a tag's map at position n is ⟨positions[g*, n], w⟩ with g* the group that gives
        it its score, and ⟨positions at the pooled features, w⟩ + ⟨evidence[g*], w⟩ is
        the score itself.
        """
        att = self.group_attention.weights(pooled)  # [B, G, G]
        mixed = att @ pooled  # [B, G, D], what forward's group attention returns
        if self.cosine_scale:
            out = F.normalize(mixed, dim=-1) * self.cosine_scale
            scale = self.cosine_scale / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            out, scale = mixed, torch.ones_like(mixed[..., :1])  # [B, G, 1]
        g, n, d = self.groups, self.tokens, self.dim  # static: the graph's output shape
        # one MatMul over the flattened positions (what the GFLOPs convention counts)
        positions = (att @ torch.sigmoid(grid).reshape(-1, g, n * d)).reshape(-1, g, n, d) \
            * scale.unsqueeze(-1)  # [B, G, N, D]
        if evidence is None:
            share = torch.zeros_like(out)
        else:
            share = att.sum(dim=-1, keepdim=True) * evidence * scale  # [B, G, D]
        return out, positions, share

    @staticmethod
    def score(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, G, D] × [L, D] → [B, L]: the best group's dot product with each label."""
        return torch.einsum("bgd,ld->bgl", out, labels).amax(dim=1)


def released_layout(out: torch.Tensor) -> torch.Tensor:
    """The released test code's reading of the [B, G, D] buffer as [B, D, G] (vectors flat[j::G]).

    Use only to score with the authors' weights; models trained here use `out` as is.
    """
    b, g, d = out.shape
    return out.reshape(b, d, g).transpose(1, 2)  # [B, G, D]
