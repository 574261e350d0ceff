"""The ImageNet-evidence input shared by every trainable head (regime (b), method.md §3).

The backbone's ImageNet class probabilities p = softmax(logits) [B, C] go through one
zero-initialised Linear C → D (`head.evidence`), so training starts from the head alone and
learns how much of the classifier's evidence to use. The trainer may start its weights at the
class names' label vectors (a ConSE prior; `TrainConfig.evidence_init`). In the strict variant
the classes in `exclude` (those naming an unseen label, `models/assets/imagenet_excluded.tsv`)
are removed from the input: the softmax runs over the kept classes only, so nothing of them
reaches the head, at training or at serving time. The mask (`head.evidence_dropped`) is rebuilt
from the constructor argument, not stored; without exclusions the head's graph is exactly the
plain softmax → Linear it always was (exported artifacts stay byte-identical).
"""

from __future__ import annotations

import torch
from torch import nn


def add_evidence_input(head: nn.Module, classes: int, dim: int,
                       exclude: tuple[int, ...] | list[int] = ()) -> None:
    """Give `head` its evidence input: `head.evidence` (Linear C → D, or None when `classes` is
    0: regime (a), visual features only), `head.evidence_dropped` and `uses_imagenet_logits`."""
    head.evidence = None
    dropped = None
    if classes:
        head.evidence = nn.Linear(classes, dim)
        nn.init.zeros_(head.evidence.weight)
        nn.init.zeros_(head.evidence.bias)
        if exclude:
            dropped = torch.zeros(classes, dtype=torch.bool)
            dropped[list(exclude)] = True
            if bool(dropped.all()):
                raise ValueError("the evidence exclusion list drops every class")
    elif exclude:
        raise ValueError("evidence_exclude needs imagenet_evidence_dim > 0")
    head.register_buffer("evidence_dropped", dropped, persistent=False)  # [C] or None
    head.uses_imagenet_logits = head.evidence is not None


def evidence_vector(head: nn.Module, logits: torch.Tensor | None) -> torch.Tensor:
    """logits [B, C] → the head's evidence vector [B, D]."""
    if logits is None:
        raise ValueError(f"this {type(head).__name__} was built with imagenet_evidence_dim > 0 "
                         "and needs the backbone's ImageNet logits")
    if head.evidence_dropped is not None:  # strict: renormalise over the kept classes
        logits = logits.masked_fill(head.evidence_dropped, float("-inf"))
    return head.evidence(logits.softmax(dim=-1))  # [B, D]


def append_evidence(head: nn.Module, features: torch.Tensor, logits: torch.Tensor | None
                    ) -> torch.Tensor:
    """[B, N, C] → [B, N, C + D]: the head's evidence vector appended to every feature (the
    head appends w_l to each label's classifier, so every score gains ⟨evidence, w_l⟩)."""
    if head.evidence is None:
        return features
    e = evidence_vector(head, logits)  # [B, D]
    return torch.cat([features, e.unsqueeze(1).expand(-1, features.shape[1], -1)], dim=-1)


def append_labels(head: nn.Module, classifiers: torch.Tensor, labels: torch.Tensor
                  ) -> torch.Tensor:
    """[L, C] → [L, C + D]: each label's classifier with its label vector [L, D] appended, the
    other half of `append_evidence` (unchanged without evidence)."""
    return classifiers if head.evidence is None else torch.cat([classifiers, labels], dim=-1)
