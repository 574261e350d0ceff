"""Relevance maps (README "Relevance maps"): the head's terms follow the score's own path, so a
tag's map evaluated at the pooled features, plus its evidence share, is its score."""

import pytest
import torch

from models.heads.evidence import evidence_vector
from models.heads.ml2p import ML2PHead

VARIANTS = {
    "released": {},
    "served default": {"cosine_scale": 10.0, "imagenet_evidence_dim": 10, "group_softmax": True},
    "cosine, no evidence": {"cosine_scale": 5.0},
}


def lite0_taps(b: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.randn(b, 40, 28, 28), torch.randn(b, 112, 14, 14), torch.randn(b, 320, 7, 7))


def _head(kwargs: dict) -> ML2PHead:
    head = ML2PHead(backbone="efficientnet_lite0", groups=3, dim=16, widths=(16, 16, 32),
                    **kwargs).eval()
    if head.evidence is not None:  # zero-initialised: give the evidence term a real share
        torch.nn.init.normal_(head.evidence.weight, std=0.5)
        torch.nn.init.normal_(head.evidence.bias, std=0.5)
    return head


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_explained_pass_returns_the_plain_vectors(variant):
    head, taps, logits = _head(VARIANTS[variant]), lite0_taps(), torch.randn(2, 10)
    logits = logits if head.uses_imagenet_logits else None
    with torch.no_grad():
        plain = head(taps, logits)
        groups, positions, evidence = head(taps, logits, explain=True)
    torch.testing.assert_close(groups, plain, rtol=1e-5, atol=1e-5)
    assert positions.shape == (2, 3, 49, 16) and evidence.shape == (2, 3, 16)
    if head.evidence is None:
        assert not evidence.any()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_map_at_the_pooled_features_plus_its_evidence_is_the_score(variant):
    head, taps = _head(VARIANTS[variant]), lite0_taps()
    logits = torch.randn(2, 10) if head.uses_imagenet_logits else None
    grids = []
    hook = head.mixer.register_forward_hook(lambda module, args, out: grids.append(out))
    with torch.no_grad():
        groups = head(taps, logits)
        hook.remove()
        grid = grids[0]  # [B, G, N, D], the mixer's output per position
        evidence = (evidence_vector(head, logits).unsqueeze(1) if logits is not None
                    else None)
        pooled = torch.sigmoid(grid.amax(dim=2)) + (0 if evidence is None else evidence)
        # the pooled features put in place of every position
        _, at_pooled, share = head.relevance_terms(grid.amax(dim=2, keepdim=True)
                                                   .expand_as(grid), pooled, evidence)
    labels = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    scores = head.score(groups, labels)  # [B, L]
    best = torch.einsum("bgd,ld->bgl", groups, labels).argmax(dim=1)  # [B, L]
    for b in range(2):
        for j in range(6):
            g = best[b, j]
            value = at_pooled[b, g, 0] @ labels[j] + share[b, g] @ labels[j]
            torch.testing.assert_close(value, scores[b, j], rtol=1e-4, atol=1e-5)


def test_positions_differ_so_a_map_is_not_flat():
    head, taps = _head(VARIANTS["served default"]), lite0_taps(1)
    logits = torch.randn(1, 10)
    with torch.no_grad():
        _, positions, _ = head(taps, logits, explain=True)
    assert positions.std(dim=2).min() > 0  # positions differ: the map is not flat
