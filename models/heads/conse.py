"""ConSE (Norouzi et al., ICLR 2014) as a training-free zero-shot tagger (method.md §3).

The "seen-class classifier" is the backbone's own ImageNet-1k head, so ConSE uses no tap at
all: it reads the ImageNet logits. With the T most probable classes y_1..y_T,

    f(x) = Σ_t p_t · w(y_t) / Σ_t p_t,      s_l = cos(f(x), w_l),

where w(y) are the label-space vectors of the ImageNet class names (set by the caller with
`set_class_vectors`, embedded by the same label embedder and label transform as the labels).
`forward` returns the unit vector f(x)/‖f(x)‖ as [B, 1, D], so the shared max-over-G dot
product scoring gives the cosine.

Zero-shot hygiene: `set_exclusion_mask` drops ImageNet classes that name an unseen concept;
the softmax is then taken over the kept classes only (= renormalising their probabilities).

`source="seen"` (regime (a), visual features only): the seen-class classifier is trained here
instead — a Linear over the pooled stride-32 tap, one sigmoid output per seen training label
(BCE, `models.baseline_losses`) — and the class vectors are those seen labels' vectors; the
ImageNet logits are not read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import register_head
from models.heads.ml2p import TRANSFORM_CONFIGS


@register_head("conse")
class ConSEHead(nn.Module):
    """ConSE: buffers only (class vectors, exclusion mask), plus the seen-label classifier
    when `source="seen"`.

    Args:
        dim: D, the label-space dimension of the class vectors.
        top_t: T, how many of the most probable classes are mixed (paper: 10).
        num_classes: classifier width (1000 for ImageNet-1k; the seen labels for "seen").
        exclude_unseen: whether `train_any` sets the exclusion mask (classes naming an unseen
            label); False keeps all classes (the mask can still be set explicitly).
        source: "imagenet" (training-free, the backbone's classifier) or "seen" (a classifier
            trained on the seen labels over the pooled tap `tap`).
        backbone: names the tap channels for "seen"; input_size: unused.
    """

    def __init__(self, dim: int = 300, top_t: int = 10, num_classes: int = 1000,
                 exclude_unseen: bool = True, source: str = "imagenet", tap: int = 2,
                 backbone: str | None = None, input_size: int | None = None) -> None:
        super().__init__()
        if source not in ("imagenet", "seen"):
            raise ValueError(f"ConSE source must be 'imagenet' or 'seen', got {source!r}")
        self.dim, self.top_t, self.num_classes = dim, top_t, num_classes
        self.exclude_unseen, self.source, self.tap = exclude_unseen, source, tap
        self.trainable = source == "seen"
        self.uses_imagenet_logits = source == "imagenet"
        if self.trainable:
            channels = TRANSFORM_CONFIGS[backbone or "efficientnet_lite0"].in_channels[tap]
            self.classifier = nn.Linear(channels, num_classes)
        self.aux: dict[str, torch.Tensor] = {}
        self.register_buffer("class_vectors", torch.zeros(num_classes, dim))  # [C, D]
        self.register_buffer("excluded", torch.zeros(num_classes, dtype=torch.bool))  # [C]

    def set_class_vectors(self, vectors: torch.Tensor) -> None:
        """vectors [C, D]: the class names in label space (normalised here)."""
        if tuple(vectors.shape) != (self.num_classes, self.dim):
            raise ValueError(f"class vectors must be [{self.num_classes}, {self.dim}], "
                             f"got {tuple(vectors.shape)}")
        self.class_vectors.copy_(F.normalize(vectors.detach().float(), dim=-1))

    def set_exclusion_mask(self, mask: torch.Tensor | None) -> None:
        """mask [C] bool, True = never use this class (it names an unseen concept)."""
        if mask is None:
            self.excluded.zero_()
            return
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (self.num_classes,) or bool(mask.all()):
            raise ValueError(f"exclusion mask must be [{self.num_classes}] and keep a class")
        self.excluded.copy_(mask)

    def forward(self, taps: tuple[torch.Tensor, ...] | None = None,
                imagenet_logits: torch.Tensor | None = None) -> torch.Tensor:
        if not bool(self.class_vectors.any()):
            raise RuntimeError("ConSE class vectors are unset; call set_class_vectors first")
        if self.trainable:
            logits = self.classifier(taps[self.tap].mean(dim=(2, 3)))  # [B, C]
            self.aux = {"logits": logits}
            probs = torch.sigmoid(logits)  # multi-label seen classes
        else:
            if imagenet_logits is None:
                raise ValueError("ConSE needs the backbone's ImageNet logits")
            logits = imagenet_logits.float().masked_fill(self.excluded, float("-inf"))  # [B, C]
            probs = logits.softmax(dim=-1)  # renormalised over the kept classes
        top = probs.topk(min(self.top_t, int((~self.excluded).sum())), dim=-1)  # [B, T]
        p = top.values / top.values.sum(-1, keepdim=True)  # [B, T]
        f = torch.einsum("bt,btd->bd", p, self.class_vectors[top.indices])  # [B, D]
        return F.normalize(f, dim=-1).unsqueeze(1)  # [B, 1, D]

    @staticmethod
    def score(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, 1, D] × [L, D] → [B, L]: cosine (both sides unit length)."""
        return torch.einsum("bgd,ld->bgl", out, F.normalize(labels, dim=-1)).amax(dim=1)
