"""ML2P head: shapes, the paper's parameter count, channel shuffle, variants, scoring."""

import pytest
import torch

from models.heads import available_heads, create_head
from models.heads.ml2p import (
    TRANSFORM_CONFIGS,
    GroupAttention,
    ML2PHead,
    channel_shuffle,
    released_layout,
)


def vgg_taps(b: int = 2, side: int = 224) -> tuple[torch.Tensor, ...]:
    s = side // 8
    return (torch.randn(b, 256, s, s), torch.randn(b, 512, s // 2, s // 2),
            torch.randn(b, 512, s // 4, s // 4))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_count():
    head = create_head("ml2p", backbone="vgg19_bn", groups=7, dim=300)
    g, d = 7, 300
    gd = g * d
    transform = (256 * 512 + 2 * 512) + (512 * 512 + 2 * 512) + (512 * 1024 + 2 * 1024)
    embedding = 2048 * gd + gd
    attention = (gd * 3 * gd + 3 * gd) + (3 * gd * 9 + 3 * gd) + g  # qkv, depthwise, temperature
    mixer = (2 * 2 * d) + (49 * 9 + 9 + 9 * 49 + 49) + (d * 60 + 60 + 60 * d + d)
    group_attention = 2 * (2 * (d * d + d))
    expected = transform + embedding + attention + mixer + group_attention
    assert expected == 18_923_507  # ≈ 19 M, as method.md counts; qkv alone is 13.2 M
    assert n_params(head) == expected
    assert n_params(head.attention.qkv) == gd * 3 * gd + 3 * gd


def test_forward_shapes_and_score():
    head = ML2PHead().eval()
    with torch.no_grad():
        out = head(vgg_taps())
    assert out.shape == (2, 7, 300)
    labels = torch.nn.functional.normalize(torch.randn(5, 300), dim=1)
    scores = head.score(out, labels)
    assert scores.shape == (2, 5)
    loop = torch.tensor([[max(float(out[b, g] @ labels[j]) for g in range(7)) for j in range(5)]
                         for b in range(2)])
    torch.testing.assert_close(scores, loop, rtol=1e-5, atol=1e-5)


def test_lite0_config_and_input_size():
    assert TRANSFORM_CONFIGS["efficientnet_lite0"].in_channels == (40, 112, 320)
    head = ML2PHead(backbone="efficientnet_lite0", groups=3, dim=32, widths=(16, 16, 32))
    taps = (torch.randn(1, 40, 28, 28), torch.randn(1, 112, 14, 14), torch.randn(1, 320, 7, 7))
    assert head(taps).shape == (1, 3, 32)
    big = ML2PHead(backbone="efficientnet_lite0", groups=3, dim=32, widths=(16, 16, 32),
                   input_size=256)
    assert big.tokens == 64 and big.mixer.token_mlp[0].out_features == 12
    taps256 = (torch.randn(1, 40, 32, 32), torch.randn(1, 112, 16, 16), torch.randn(1, 320, 8, 8))
    assert big(taps256).shape == (1, 3, 32)
    with pytest.raises(ValueError, match="positions"):
        head(taps256)


def test_channel_shuffle_mapping():
    g, d = 3, 4
    x = torch.arange(g * d, dtype=torch.float32).view(1, g * d, 1, 1)
    y = channel_shuffle(x, g).flatten()
    for gi in range(g):
        for di in range(d):
            assert y[di * g + gi] == gi * d + di  # new index d·G + g holds old g·D + d


def test_faithful_and_residual_differ():
    faithful = ML2PHead(groups=2, dim=20, widths=(8, 8, 8)).eval()
    poster = ML2PHead(groups=2, dim=20, widths=(8, 8, 8), residual=True).eval()
    poster.load_state_dict(faithful.state_dict())  # same parameters: only the residual differs
    taps = vgg_taps(1)
    with torch.no_grad():
        assert not torch.allclose(faithful(taps), poster(taps))
        x = torch.randn(1, 40, 7, 7)
        diff = poster.attention(x) - faithful.attention(x)
        torch.testing.assert_close(diff, x.view(1, 2, 20, 49))


def test_group_attention_has_no_softmax():
    ga = GroupAttention(6, 6)
    x = torch.randn(2, 4, 6)
    q, k = ga.query(x), ga.key(x)
    torch.testing.assert_close(ga(x), (q @ k.transpose(1, 2)) @ x)


def test_softmax_group_attention_is_a_bounded_mixture():
    """group_softmax: each output vector is a convex combination of the G inputs (weights
    softmax(q·kᵀ/√hidden)), so it cannot outgrow them as the released form can."""
    ga = GroupAttention(6, 6, softmax=True)
    x = torch.randn(2, 4, 6)
    q, k = ga.query(x), ga.key(x)
    weights = (q @ k.transpose(1, 2) / 6 ** 0.5).softmax(-1)
    torch.testing.assert_close(ga(x), weights @ x)
    with torch.no_grad():
        ga.query[0].weight.mul_(100)  # huge attention logits
        assert ga(x).norm(dim=-1).max() <= x.norm(dim=-1).max() + 1e-5
    head = ML2PHead(backbone="efficientnet_lite0", groups=3, dim=12, widths=(8, 8, 16),
                    group_softmax=True)
    taps = (torch.randn(2, 40, 28, 28), torch.randn(2, 112, 14, 14), torch.randn(2, 320, 7, 7))
    assert head(taps).shape == (2, 3, 12)


def test_temperature_per_head():
    head = ML2PHead(groups=4, dim=10, widths=(8, 8, 8))
    assert head.attention.temperature.shape == (4, 1, 1)
    assert torch.all(head.attention.temperature == 1)


def test_imagenet_evidence_flag():
    plain = ML2PHead(groups=2, dim=16, widths=(8, 8, 8)).eval()
    ev = ML2PHead(groups=2, dim=16, widths=(8, 8, 8), imagenet_evidence_dim=1000).eval()
    assert not plain.uses_imagenet_logits and ev.uses_imagenet_logits
    ev.load_state_dict(plain.state_dict(), strict=False)
    taps, logits = vgg_taps(2), torch.randn(2, 1000)
    with torch.no_grad():
        torch.testing.assert_close(ev(taps, logits), plain(taps))  # zero-init: starts as plain
        ev.evidence.weight.normal_()
        assert not torch.allclose(ev(taps, logits), plain(taps))
    with pytest.raises(ValueError, match="logits"):
        ev(taps)


def test_released_layout():
    out = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # [B, G=3, D=4]
    flat = out.reshape(2, -1)
    rel = released_layout(out)
    for j in range(3):
        torch.testing.assert_close(rel[:, j], flat[:, j::3])


def test_registry_and_gradients():
    assert "ml2p" in available_heads()
    head = ML2PHead(groups=2, dim=16, widths=(8, 8, 8))
    out = head(vgg_taps(2))
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
