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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import register_head


@register_head("conse")
class ConSEHead(nn.Module):
    """Training-free: no parameters, two buffers (class vectors, exclusion mask).

    Args:
        dim: D, the label-space dimension of the class vectors.
        top_t: T, how many of the most probable classes are mixed (paper: 10).
        num_classes: classifier width (1000 for ImageNet-1k).
        exclude_unseen: whether `train_any` sets the exclusion mask (classes naming an unseen
            label); False keeps all classes (the mask can still be set explicitly).
        backbone, input_size: accepted for the tagger's uniform call; unused.
    """

    uses_imagenet_logits = True
    trainable = False

    def __init__(self, dim: int = 300, top_t: int = 10, num_classes: int = 1000,
                 exclude_unseen: bool = True, backbone: str | None = None,
                 input_size: int | None = None) -> None:
        super().__init__()
        self.dim, self.top_t, self.num_classes = dim, top_t, num_classes
        self.exclude_unseen = exclude_unseen
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
        if imagenet_logits is None:
            raise ValueError("ConSE needs the backbone's ImageNet logits")
        if not bool(self.class_vectors.any()):
            raise RuntimeError("ConSE class vectors are unset; call set_class_vectors first")
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
