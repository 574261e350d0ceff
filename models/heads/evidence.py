"""The ImageNet-evidence input shared by every trainable head (regime (b), method.md §3).

The backbone's ImageNet class probabilities p = softmax(logits) [B, C] go through one
zero-initialised Linear C → D, so training starts from the head alone and learns how much of
the classifier's evidence to use. The trainer may start its weights at the class names' label
vectors (a ConSE prior; `TrainConfig.evidence_init`). In the strict variant the classes in
`exclude` (those naming an unseen label, `models/assets/imagenet_excluded.tsv`) are removed
from the input: the softmax runs over the kept classes only, so nothing of them reaches the
head, at training or at serving time.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageNetEvidence(nn.Linear):
    """logits [B, C] → evidence vector [B, D] (a Linear over the kept classes' probabilities).

    Subclasses `nn.Linear` so its state-dict keys stay `weight` / `bias`; the exclusion mask is
    rebuilt from the constructor argument, not stored.
    """

    def __init__(self, classes: int, dim: int, exclude: tuple[int, ...] | list[int] = ()) -> None:
        super().__init__(classes, dim)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        dropped = torch.zeros(classes, dtype=torch.bool)
        if exclude:
            dropped[list(exclude)] = True
        if bool(dropped.all()):
            raise ValueError("the evidence exclusion list drops every class")
        self.exclude = tuple(int(i) for i in exclude)
        self.register_buffer("dropped", dropped, persistent=False)  # [C]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.exclude:
            logits = logits.masked_fill(self.dropped, float("-inf"))  # renormalise over the kept
        return super().forward(logits.softmax(dim=-1))  # [B, D]


def build_evidence(classes: int, dim: int, exclude: tuple[int, ...] | list[int] = ()
                   ) -> ImageNetEvidence | None:
    """The evidence input, or None when `classes` is 0 (regime (a): visual features only)."""
    return ImageNetEvidence(classes, dim, exclude) if classes else None


def append_evidence(head: nn.Module, features: torch.Tensor, logits: torch.Tensor | None
                    ) -> torch.Tensor:
    """[B, N, C] → [B, N, C + D]: the head's evidence vector appended to every feature (the
    head appends w_l to each label's classifier, so every score gains ⟨evidence, w_l⟩)."""
    if head.evidence is None:
        return features
    e = head.evidence(require_logits(head, logits))  # [B, D]
    return torch.cat([features, e.unsqueeze(1).expand(-1, features.shape[1], -1)], dim=-1)


def require_logits(head: nn.Module, logits: torch.Tensor | None) -> torch.Tensor:
    if logits is None:
        raise ValueError(f"this {type(head).__name__} was built with imagenet_evidence_dim > 0 "
                         "and needs the backbone's ImageNet logits")
    return logits
