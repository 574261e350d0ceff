"""Losses against slow python-loop references on random inputs."""

import math

import pytest
import torch

from models.losses import (
    distillation_loss,
    diversity_weight,
    group_variance_reg,
    label_bce_loss,
    ml2p_loss,
    ranking_loss,
)


def random_case(b: int = 6, num_labels: int = 11, d: int = 5, g: int = 3):
    scores = torch.randn(b, num_labels, dtype=torch.float64)
    targets = torch.randint(-1, 2, (b, num_labels), dtype=torch.int8)
    targets[0] = 0  # an image without positives
    targets[1, :3] = 1  # several positives
    targets[2] = -1
    targets[2, 4] = 1  # exactly one positive and no negative
    targets[3] = 0
    targets[3, 7] = 1  # exactly one positive
    vecs = torch.nn.functional.normalize(torch.randn(num_labels, d, dtype=torch.float64), dim=1)
    groups = torch.randn(b, g, d, dtype=torch.float64)
    return scores, targets, vecs, groups


def slow_rank(scores, targets, vecs, mask=None):
    per = []
    for i in range(scores.shape[0]):
        use = [j for j in range(scores.shape[1]) if mask is None or mask[j]]
        pos = [j for j in use if targets[i, j] == 1]
        neg = [j for j in use if targets[i, j] == 0]
        if not pos or not neg:
            continue
        total = sum(math.log(1 + math.exp(scores[i, n] - scores[i, p])) for p in pos for n in neg)
        omega = 1.0
        if len(pos) > 1:
            w = vecs[pos]
            omega += float(w.var(dim=0, unbiased=True).sum())
        per.append(omega * total / (len(pos) * len(neg)))
    return sum(per) / max(len(per), 1)


def slow_reg(groups):
    out = []
    for i in range(groups.shape[0]):
        s = 0.0
        for d in range(groups.shape[2]):
            col = [float(groups[i, g, d]) for g in range(groups.shape[1])]
            m = sum(col) / len(col)
            s += sum((c - m) ** 2 for c in col) / (len(col) - 1)
        out.append(s)
    return sum(out) / len(out)


def test_ranking_loss_matches_loop():
    for seed in range(3):
        torch.manual_seed(seed)
        scores, targets, vecs, _ = random_case()
        assert ranking_loss(scores, targets, vecs).item() == pytest.approx(
            slow_rank(scores, targets, vecs), rel=1e-9)


def test_label_mask_removes_labels():
    scores, targets, vecs, _ = random_case()
    mask = torch.ones(scores.shape[1], dtype=torch.bool)
    mask[[0, 5, 8]] = False
    assert ranking_loss(scores, targets, vecs, label_mask=mask).item() == pytest.approx(
        slow_rank(scores, targets, vecs, mask), rel=1e-9)


def test_omega_single_positive_is_one():
    pos = torch.zeros(2, 4, dtype=torch.bool)
    pos[0, 1] = True
    vecs = torch.randn(4, 3)
    w = diversity_weight(pos, vecs)
    assert w.tolist() == [1.0, 1.0]


def test_ml2p_loss_combines_terms():
    scores, targets, vecs, groups = random_case()
    lam = 0.4
    expected = (1 - lam) * slow_rank(scores, targets, vecs) + lam * slow_reg(groups)
    assert ml2p_loss(scores, targets, groups, vecs, lam).item() == pytest.approx(expected, rel=1e-9)
    assert group_variance_reg(groups).mean().item() == pytest.approx(slow_reg(groups), rel=1e-9)


def test_sampled_negatives_estimate_full_loss():
    scores, targets, vecs, _ = random_case(b=4, num_labels=30)
    full = ranking_loss(scores, targets, vecs)
    gen = torch.Generator().manual_seed(0)
    sampled = ranking_loss(scores, targets, vecs, negatives=2000, generator=gen)
    assert sampled.item() == pytest.approx(full.item(), rel=0.05)
    # only real negatives are ever sampled: with one negative, sampling is exact
    t = torch.full((1, 5), -1, dtype=torch.int8)
    t[0, 0], t[0, 3] = 1, 0
    s = torch.randn(1, 5)
    assert ranking_loss(s, t, negatives=4).item() == pytest.approx(
        ranking_loss(s, t).item(), rel=1e-6)


def test_ranking_loss_gradient_flows():
    scores, targets, vecs, _ = random_case()
    scores.requires_grad_(True)
    ranking_loss(scores, targets, vecs).backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def slow_kl(student, teacher, t, exclude):
    out = []
    for i in range(student.shape[0]):
        keep = [c for c in range(student.shape[1]) if not exclude[c]]
        zt = sum(math.exp(teacher[i, c] / t) for c in keep)
        zs = sum(math.exp(student[i, c]) for c in keep)
        kl = 0.0
        for c in keep:
            p = math.exp(teacher[i, c] / t) / zt
            q = math.exp(student[i, c]) / zs
            kl += p * math.log(p / q)
        out.append(kl)
    return sum(out) / len(out)


def test_distillation_matches_loop_and_masks():
    student = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 12, dtype=torch.float64) * 3
    exclude = torch.zeros(12, dtype=torch.bool)
    exclude[[2, 7]] = True
    loss = distillation_loss(student, teacher, 2.0, exclude)
    assert loss.item() == pytest.approx(slow_kl(student.detach(), teacher, 2.0, exclude), rel=1e-9)
    assert distillation_loss(student, teacher, 2.0, keep_mask=~exclude).item() == loss.item()
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert (student.grad[:, exclude] == 0).all()  # excluded classes get no signal
    assert distillation_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="keep_mask"):
        distillation_loss(student, teacher, 1.0, ~exclude)  # a keep mask passed as exclusion


def test_label_bce_leaves_unknown_out_and_matches_a_loop():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1, 0, -1], [-1, 1, 0]], dtype=torch.int8)
    bias = torch.tensor(-0.5)
    pairs = [(2.0, 1), (-1.0, 0), (3.0, 1), (-2.0, 0)]
    expected = sum(math.log1p(math.exp(-(s + bias.item()))) if y else
                   math.log1p(math.exp(s + bias.item())) for s, y in pairs) / len(pairs)
    assert float(label_bce_loss(scores, targets, bias)) == pytest.approx(expected, rel=1e-6)
    none = torch.full((2, 3), -1, dtype=torch.int8)
    assert float(label_bce_loss(scores, none, bias)) == 0.0
