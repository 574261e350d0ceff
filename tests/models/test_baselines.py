"""Baseline heads (ConSE, Fast0Tag, LESA, BiAM) and their losses: shapes, a hand-made ConSE
case, loss references, and that each trained baseline's loss falls on a tiny batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.baseline_losses import (
    attention_global_reg,
    attention_span_reg,
    baseline_loss,
    hinge_rank_loss,
)
from models.heads import available_heads, create_head

LITE0 = (40, 112, 320)
VGG = (256, 512, 512)
D, L = 16, 7


def taps_for(channels: tuple[int, int, int], b: int = 2, size: int = 224
             ) -> tuple[torch.Tensor, ...]:
    strides = (8, 16, 32)
    return tuple(torch.randn(b, c, size // s, size // s)
                 for c, s in zip(channels, strides, strict=True))


def labels(n: int = L, d: int = D) -> torch.Tensor:
    return F.normalize(torch.randn(n, d), dim=-1)


def test_registered() -> None:
    assert {"conse", "fast0tag", "lesa", "biam"} <= set(available_heads())


@pytest.mark.parametrize(("name", "kwargs", "g"), [
    ("fast0tag", {}, 1),
    ("lesa", {}, 10),
    ("biam", {}, 196),
    ("fast0tag", {"tap": 1, "hidden": ()}, 1),
    ("lesa", {"attentions": 4, "width": 64}, 4),
])
def test_shapes_lite0(name: str, kwargs: dict, g: int) -> None:
    head = create_head(name, backbone="efficientnet_lite0", dim=D, **kwargs)
    out = head(taps_for(LITE0), None)
    assert out.shape[:2] == (2, g)
    assert head.score(out, labels()).shape == (2, L)
    n = sum(p.numel() for p in head.parameters())
    print(f"{name} {kwargs} lite0 D={D}: {n:,} parameters")


@pytest.mark.parametrize("name", ["fast0tag", "lesa", "biam"])
def test_shapes_vgg_batch1_eval(name: str) -> None:
    head = create_head(name, backbone="vgg19_bn", dim=300).eval()
    with torch.no_grad():
        out = head(taps_for(VGG, b=1), None)
        assert head.score(out, labels(3, 300)).shape == (1, 3)
    n = sum(p.numel() for p in head.parameters())
    print(f"{name} vgg19_bn D=300: {n:,} parameters")


def test_biam_score_is_top6_mean() -> None:
    head = create_head("biam", backbone="efficientnet_lite0", dim=D).eval()
    out = torch.randn(2, 9, 512)
    w = labels()
    m = torch.einsum("brc,lc->brl", out, head.classifier(w))
    expect = torch.stack([m[:, :, j].sort(dim=1, descending=True).values[:, :6].mean(1)
                          for j in range(L)], dim=1)
    torch.testing.assert_close(head.score(out, w), expect)


def test_conse_hand_made() -> None:
    # 4 classes in a 2-d label space; T = 2
    head = create_head("conse", dim=2, top_t=2, num_classes=4)
    head.set_class_vectors(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]]))
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = head(None, probs.log())
    assert out.shape == (1, 1, 2)
    f = torch.tensor([0.5, 0.3]) / 0.8  # top-2: classes 0 and 1
    w = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]])
    expect = F.normalize(w, dim=-1) @ (f / f.norm())
    torch.testing.assert_close(head.score(out, w)[0], expect)
    # exclude class 0: renormalised over {1, 2, 3}, top-2 = classes 1 and 2
    head.set_exclusion_mask(torch.tensor([True, False, False, False]))
    f = (0.3 * torch.tensor([0.0, 1.0]) + 0.15 * torch.tensor([-1.0, 0.0])) / 0.45
    expect = F.normalize(w, dim=-1) @ (f / f.norm())
    torch.testing.assert_close(head.score(head(None, probs.log()), w)[0], expect)
    assert sum(p.numel() for p in head.parameters()) == 0


def test_conse_needs_vectors_and_logits() -> None:
    head = create_head("conse", dim=3, num_classes=5)
    with pytest.raises(RuntimeError):
        head(None, torch.randn(1, 5))
    head.set_class_vectors(torch.randn(5, 3))
    with pytest.raises(ValueError):
        head(None, None)


def test_hinge_rank_loss_reference() -> None:
    scores = torch.randn(4, 6, dtype=torch.float64)
    targets = torch.randint(-1, 2, (4, 6), dtype=torch.int8)
    targets[0] = 0  # no positive: contributes 0 but counts in the mean
    targets[1, :2] = 1
    expect = 0.0
    for i in range(4):
        pos = [j for j in range(6) if targets[i, j] == 1]
        neg = [j for j in range(6) if targets[i, j] == 0]
        hinges = [max(0.0, 1 + float(scores[i, n] - scores[i, p])) for p in pos for n in neg]
        expect += sum(hinges) / (sum(h > 0 for h in hinges) + 1e-8) / 4
    assert math.isclose(float(hinge_rank_loss(scores, targets)), expect, rel_tol=1e-9)


def test_lesa_regularisers_reference() -> None:
    a = torch.randn(2, 3, 5, dtype=torch.float64)
    n = F.normalize(a, dim=-1)
    off = [float(n[b, i] @ n[b, j]) for b in range(2) for i in range(3) for j in range(3) if i != j]
    assert math.isclose(float(attention_span_reg(a)), math.sqrt(sum(x * x for x in off)))
    s, g = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0, 3.0]])
    t = torch.tensor([[1, 0, -1]], dtype=torch.int8)
    # positive: max(0, -(2-1)) = 0; negative: max(0, 0-1) = 0; unknown ignored
    assert float(attention_global_reg(s, g, t)) == 0.0
    assert float(attention_global_reg(g, s, t)) == 2.0  # positive 1 + negative 1


@pytest.mark.parametrize("name", ["fast0tag", "lesa", "biam"])
def test_loss_decreases(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, backbone="efficientnet_lite0", dim=D)
    taps = taps_for(LITE0, b=4)
    w = labels()
    targets = torch.zeros(4, L, dtype=torch.int8)
    targets[0, [0, 3]] = 1
    targets[1, 1] = 1
    targets[2, [2, 5]] = 1
    targets[3, 6] = 1
    targets[3, 4] = -1
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, stats = baseline_loss(name, head, head(taps, None), w, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        assert all(math.isfinite(v) for v in stats.values())
    print(f"{name}: loss {losses[0]:.4f} → {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0]


def test_conse_has_no_loss() -> None:
    with pytest.raises(ValueError):
        baseline_loss("conse", None, torch.zeros(1, 1, 2), labels(2, 2), torch.zeros(1, 2))
