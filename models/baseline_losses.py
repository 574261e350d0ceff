"""Each baseline's own training loss (method.md §3), vectorised over the batch.

Targets follow `models.losses`: int8 [B, L], 1 positive, 0 negative, -1 unknown (ignored);
`label_mask` [L] (False = label not used) removes labels entirely.

- Fast0Tag: RankNet `log(1 + exp(s_n − s_p))` over all (positive, negative) pairs of an image,
  averaged over its pairs (= `models.losses.ranking_loss` with ω = 1).
- BiAM and LESA share one ranking loss in their released code: the hinge
  `max(0, 1 + s_n − s_p)` summed over pairs and divided by the number of *violating* pairs
  (+1e-8), then averaged over every image of the batch (images without a pair count as 0).
- ConSE with a seen-label classifier (regime (a)): per-label BCE over the known pairs.
- LESA adds three small regularisers (weights of its NUS-WIDE zero-shot script):
  attention-distribution 0.1, attention-global 0.001, attention-span (orthogonality) 0.01;
  the optional L2 on the conv weights is off there (`is_regularizer=False`) and here.

`baseline_loss(name, head, out, labels, targets)` dispatches by head name, so the trainer can
call it for any baseline; it returns (loss, stats) with plain floats in stats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import ranking_loss


def _pos_neg(targets: torch.Tensor, label_mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = targets == 1, targets == 0  # [B, L]
    if label_mask is not None:
        pos, neg = pos & label_mask, neg & label_mask
    return pos, neg


def rank_net_loss(scores: torch.Tensor, targets: torch.Tensor,
                  label_mask: torch.Tensor | None = None, negatives: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast0Tag: mean over images of 1/(|P||N|) Σ log(1 + exp(s_n − s_p))."""
    return ranking_loss(scores, targets, None, label_mask, negatives, generator)


def hinge_rank_loss(scores: torch.Tensor, targets: torch.Tensor,
                    label_mask: torch.Tensor | None = None, margin: float = 1.0,
                    eps: float = 1e-8) -> torch.Tensor:
    """LESA / BiAM: per image Σ_{p,n} max(0, margin + s_n − s_p) / (#violating pairs + eps),
    averaged over all B images. scores [B, L], targets [B, L] → scalar."""
    pos, neg = _pos_neg(targets, label_mask)
    n_pos = pos.sum(1)  # [B]
    p_max = max(int(n_pos.max()), 1) if len(n_pos) else 1
    top = torch.topk(pos.to(scores.dtype), p_max, dim=1)  # positives gathered: [B, Pmax]
    s_pos = scores.gather(1, top.indices)  # [B, Pmax]
    pair_ok = (top.values > 0).unsqueeze(-1) & neg.unsqueeze(1)  # [B, Pmax, L]
    diff = F.relu(margin + scores.unsqueeze(1) - s_pos.unsqueeze(-1)) * pair_ok  # [B, Pmax, L]
    violations = (diff > 0).sum((1, 2)).to(scores.dtype)  # [B]
    return (diff.sum((1, 2)) / (violations + eps)).mean()


def attention_span_reg(attention_logits: torch.Tensor) -> torch.Tensor:
    """LESA orthogonality: ‖off-diagonal of ÂÂᵀ‖_F over the whole batch, Â = attention logits
    [B, K, R] L2-normalised over regions (as released: one Frobenius norm, not a mean)."""
    a = F.normalize(attention_logits, dim=-1)  # [B, K, R]
    gram = a @ a.transpose(-2, -1)  # [B, K, K]
    off = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    return off.square().sum().sqrt()


def attention_distribution_reg(attention_scores: torch.Tensor, targets: torch.Tensor,
                               label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """LESA soft cardinality: P = softmax over the K features of each label's scores [B, K, L];
    mass per feature summed over the positives, squared, averaged over K and images (it is
    smallest when the positives spread over different attention features)."""
    pos, _ = _pos_neg(targets, label_mask)
    share = attention_scores.softmax(dim=1) * pos.unsqueeze(1)  # [B, K, L]
    return share.sum(-1).square().mean()


def attention_global_reg(scores: torch.Tensor, global_scores: torch.Tensor,
                         targets: torch.Tensor, label_mask: torch.Tensor | None = None,
                         margin: float = 0.0) -> torch.Tensor:
    """LESA attention-global: Σ max(0, margin − y·(s − s_global)) with y = ±1 for
    positives/negatives (unknown and masked labels left out): attended scores should beat the
    mean-pooled feature's on positives and stay below it on negatives. Summed (as released)."""
    pos, neg = _pos_neg(targets, label_mask)
    y = pos.to(scores.dtype) - neg.to(scores.dtype)  # [B, L]
    hinge = F.relu(margin - y * (scores - global_scores))
    return (hinge * (pos | neg)).sum()


def lesa_loss(head: nn.Module, out: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
              label_mask: torch.Tensor | None = None, lamb_dist: float = 0.1,
              lamb_global: float = 0.001, lamb_span: float = 0.01
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge ranking + the three regularisers. `out` [B, K, C'] is the head's latest forward
    (its `aux` holds the attention logits and global feature of that forward)."""
    att = head.attention_scores(out, labels)  # [B, K, L]
    scores = att.amax(dim=1)  # [B, L]
    rank = hinge_rank_loss(scores, targets, label_mask)
    stats = {"rank": float(rank.detach())}
    loss = rank
    if lamb_dist:
        dist = attention_distribution_reg(att, targets, label_mask)
        loss, stats["att_dist"] = loss + lamb_dist * dist, float(dist.detach())
    if lamb_global:
        global_scores = head.aux["global"] @ head.classifiers(labels).T  # [B, L]
        glob = attention_global_reg(scores, global_scores, targets, label_mask)
        loss, stats["att_global"] = loss + lamb_global * glob, float(glob.detach())
    if lamb_span:
        span = attention_span_reg(head.aux["attention_logits"])
        loss, stats["att_span"] = loss + lamb_span * span, float(span.detach())
    return loss, stats


def seen_classifier_loss(logits: torch.Tensor, targets: torch.Tensor,
                         label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ConSE's seen-label classifier (regime (a)): BCE over the known (image, label) pairs."""
    known = targets >= 0  # [B, L]
    if label_mask is not None:
        known = known & label_mask
    losses = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype),
                                                reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


def baseline_loss(name: str, head: nn.Module, out: torch.Tensor, labels: torch.Tensor,
                  targets: torch.Tensor, label_mask: torch.Tensor | None = None,
                  **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    """The named baseline's loss for head output `out` against transformed `labels` [L, D].

    kwargs: `negatives`/`generator` (fast0tag), `margin` (biam), `lamb_*` (lesa).
    """
    if name == "fast0tag":
        loss = rank_net_loss(head.score(out, labels), targets, label_mask, **kwargs)
    elif name == "biam":
        loss = hinge_rank_loss(head.score(out, labels), targets, label_mask, **kwargs)
    elif name == "lesa":
        return lesa_loss(head, out, labels, targets, label_mask, **kwargs)
    elif name == "conse":
        if not getattr(head, "trainable", False):
            raise ValueError("ConSE over the ImageNet classifier is training-free; it has no loss")
        loss = seen_classifier_loss(head.aux["logits"], targets, label_mask)
        return loss, {"bce": float(loss.detach())}
    else:
        raise KeyError(f"no baseline loss for head {name!r}")
    return loss, {"rank": float(loss.detach())}


__all__ = [
    "attention_distribution_reg",
    "attention_global_reg",
    "attention_span_reg",
    "baseline_loss",
    "hinge_rank_loss",
    "lesa_loss",
    "rank_net_loss",
    "seen_classifier_loss",
]
