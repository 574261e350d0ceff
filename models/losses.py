"""Losses (method.md §2), vectorised over the batch, plus ImageNet distillation.

Targets are int8 [B, L]: 1 positive, 0 negative, -1 unknown (ignored: neither positive nor
negative). A label mask [L] (False = don't use) removes labels from the loss entirely, e.g. the
labels of another dataset or the unseen ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pos_neg(targets: torch.Tensor, label_mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = targets == 1, targets == 0  # [B, L]
    if label_mask is not None:
        pos, neg = pos & label_mask, neg & label_mask
    return pos, neg


def diversity_weight(pos: torch.Tensor, label_vecs: torch.Tensor,
                     unbiased: bool = True) -> torch.Tensor:
    """ω = 1 + Σ_d Var_{p∈P}(w_p[d]) per image [B]; ω = 1 with at most one positive.

    Unbiased variance as SDL's loss code (torch.var), which special-cases a single positive.
    """
    p = pos.to(label_vecs.dtype)  # [B, L]
    n = p.sum(1, keepdim=True)  # [B, 1]
    mean = (p @ label_vecs) / n.clamp(min=1)  # [B, D]
    sq = (p @ label_vecs.square()) / n.clamp(min=1)  # [B, D] E[w²]
    var = (sq - mean.square()).clamp(min=0)  # population variance
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return 1 + torch.where(n > 1, var, torch.zeros_like(var)).sum(1)  # [B]


def ranking_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    label_vecs: torch.Tensor | None = None,
    label_mask: torch.Tensor | None = None,
    negatives: int = 0,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """ω · 1/(|P||N|) Σ_p Σ_n log(1 + exp(s_n − s_p)) per image.

    scores [B, L], targets [B, L]; `label_vecs` [L, D] gives ω (None: ω = 1).
    `negatives=k > 0` samples k negatives per positive (uniformly, with replacement) instead of
    using all of them; the normaliser is then |P|·k. Images without a (positive, negative)
    pair have no ranking term: `mean` averages over images that have one (0 if none);
    `none` returns [B] with 0 for them.
    """
    pos, neg = _pos_neg(targets, label_mask)
    n_pos, n_neg = pos.sum(1), neg.sum(1)  # [B]
    valid = (n_pos > 0) & (n_neg > 0)
    if negatives > 0:
        b, num_labels = scores.shape
        rows = valid.nonzero().squeeze(1)
        # k sampled negatives for every label slot; only the slots of positives are used
        idx = torch.zeros(b, num_labels * negatives, dtype=torch.long, device=scores.device)
        if len(rows):
            idx[rows] = torch.multinomial(neg[rows].float(), num_labels * negatives,
                                          replacement=True, generator=generator)
        s_neg = scores.gather(1, idx).view(b, num_labels, negatives)  # [B, L, k]
        pair = F.softplus(s_neg - scores.unsqueeze(-1))  # [B, L, k]
        total = (pair * pos.unsqueeze(-1)).sum((1, 2))
        per_image = total / (n_pos * negatives).clamp(min=1)
    else:
        # positives gathered to [B, Pmax] so memory is B·Pmax·L, not B·L²
        p_max = max(int(n_pos.max()), 1) if len(n_pos) else 1
        top = torch.topk(pos.to(scores.dtype), p_max, dim=1)
        p_idx, p_ok = top.indices, top.values > 0  # [B, Pmax]
        s_pos = scores.gather(1, p_idx)  # [B, Pmax]
        pair = F.softplus(scores.unsqueeze(1) - s_pos.unsqueeze(-1))  # [B, Pmax, L]
        pair = pair * (p_ok.unsqueeze(-1) & neg.unsqueeze(1))
        per_image = pair.sum((1, 2)) / (n_pos * n_neg).clamp(min=1)
    if label_vecs is not None:
        per_image = per_image * diversity_weight(pos, label_vecs)
    per_image = torch.where(valid, per_image, torch.zeros_like(per_image))
    if reduction == "none":
        return per_image
    return per_image.sum() / valid.sum().clamp(min=1)


def group_variance_reg(groups: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """L_reg = ‖Σ_d Var_g(S_g[d])‖₁ per image [B] (variance over the G vectors, per dim)."""
    return groups.var(dim=1, unbiased=unbiased).abs().sum(-1)  # [B]


def ml2p_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    label_vecs: torch.Tensor,
    lam: float = 0.0,
    negatives: int = 0,
    label_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(1 − λ)·ω·L_rank + λ·L_reg, averaged over images (method.md §2).

    scores [B, L] = max_g ⟨S_g, w_l⟩, groups S [B, G, D], label_vecs [L, D] (transformed). The
    ranking term is averaged over images with a (positive, negative) pair, L_reg over all
    images; with every image labelled this is exactly the mean of the per-image sum.
    """
    loss = (1 - lam) * ranking_loss(scores, targets, label_vecs, label_mask, negatives,
                                    generator)
    if lam:
        loss = loss + lam * group_variance_reg(groups).mean()
    return loss


def label_bce_loss(scores: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor
                   ) -> torch.Tensor:
    """Binary cross-entropy of `scores + bias` per (image, label), unknown (-1) entries left
    out. Unlike the per-image ranking loss it compares one label's scores *across* images,
    which is what per-label AP (mAP) ranks. scores, targets [B, L]; bias a learned scalar."""
    known = targets >= 0
    if not bool(known.any()):
        return scores.sum() * 0
    return F.binary_cross_entropy_with_logits((scores + bias)[known],
                                              (targets[known] == 1).to(scores.dtype))


def distillation_loss(
    student_scores: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    exclude_mask: torch.Tensor | None = None,
    *,
    keep_mask: torch.Tensor | None = None,
    student_temperature: float = 1.0,
) -> torch.Tensor:
    """KL(softmax(logits/T) ‖ softmax(scores/τ)) over the kept classes, batch mean.

    student_scores [B, C]: the head's scores for the C ImageNet class names; teacher_logits
    [B, C]: the backbone's classifier. `exclude_mask` [C] (True = drop, e.g. classes naming an
    unseen concept) or, alternatively, `keep_mask` (True = keep); both distributions are
    renormalised over the kept classes.
    """
    c = teacher_logits.shape[-1]
    if exclude_mask is not None and keep_mask is not None:
        raise ValueError("pass exclude_mask or keep_mask, not both")
    keep = None
    if exclude_mask is not None:
        exclude_mask = exclude_mask.to(torch.bool)
        # guard: an exclusion list is short; a mostly-True mask is almost surely a keep mask
        if int(exclude_mask.sum()) * 2 > c:
            raise ValueError(f"exclude_mask drops {int(exclude_mask.sum())} of {c} classes; "
                             f"pass keep_mask= if that is the set to keep")
        keep = ~exclude_mask
    elif keep_mask is not None:
        keep = keep_mask.to(torch.bool)
    t = teacher_logits / temperature
    s = student_scores / student_temperature
    if keep is not None:  # select, rather than -inf fill, so no NaN can reach a gradient
        t, s = t[:, keep], s[:, keep]
    log_p = t.log_softmax(-1)  # [B, C_kept]
    return (log_p.exp() * (log_p - s.log_softmax(-1))).sum(-1).mean()
