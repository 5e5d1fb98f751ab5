"""The organ-tag head, its pixel-tag attention maps, and the map helpers used before fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mosmoskit.models import (
    GroupFC,
    TagHead,
    normalize_maps,
    scale_maps_by_probability,
    sincos_position_encoding,
    upsample_maps,
)


def _head(seed: int = 0, **kwargs) -> TagHead:
    torch.manual_seed(seed)
    defaults = {"num_tags": 5, "feature_dim": 12, "embed_dim": 16, "num_heads": 4}
    return TagHead(**{**defaults, **kwargs})


def _features(grid: tuple[int, ...], batch: int = 2, dim: int = 12, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, math.prod(grid), dim)


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("grid", [(6, 4), (4, 3, 2)])
def test_output_shapes_and_map_layout(grid):
    head = _head()
    out = head(_features(grid), grid)
    n = math.prod(grid)
    assert out.logits.shape == (2, 5)
    assert out.attention.shape == (2, 5, n)
    assert out.maps.shape == (2, 5, *grid)
    torch.testing.assert_close(out.attention.sum(dim=-1), torch.ones(2, 5))
    assert (out.attention >= 0).all()
    for b in range(2):
        for k in range(5):
            assert torch.equal(out.maps[b, k].flatten(), out.attention[b, k])
    # Row-major: cell (i, j[, l]) of the map is feature position i*w(*d) + ...
    index = tuple(g - 1 for g in grid)
    assert out.maps[1, 3][index] == out.attention[1, 3, n - 1]


def test_attention_rows_sum_to_one_in_training_with_dropout():
    head = _head(dropout=0.5, num_layers=2).train()
    out = head(_features((4, 4)), (4, 4))
    torch.testing.assert_close(out.attention.sum(dim=-1), torch.ones(2, 5))


def test_attention_equals_a_naive_recomputation():
    """The maps are the weights the cross-attention really used: recompute them by hand."""
    head = _head(embed_dim=16, num_heads=4).eval()
    grid = (3, 5)
    features = _features(grid)
    out = head(features, grid)
    with torch.no_grad():
        memory = F.layer_norm(head.input_proj(features), (16,), head.input_norm.weight, head.input_norm.bias)
        keys = memory + sincos_position_encoding(grid, 16)
        layer = head.layers[0]
        queries = layer.norm_cross(head.tag_queries()).unsqueeze(0).expand(2, -1, -1)
        w_q, w_k, _ = layer.cross_attn.in_proj_weight.chunk(3)
        b_q, b_k, _ = layer.cross_attn.in_proj_bias.chunk(3)
        q = (queries @ w_q.T + b_q).reshape(2, 5, 4, 4)  # (B, K, heads, head_dim)
        k = (keys @ w_k.T + b_k).reshape(2, 15, 4, 4)
        expected = torch.zeros(2, 5, 15)
        for h in range(4):
            scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(4)
            expected += scores.softmax(dim=-1) / 4
    torch.testing.assert_close(out.attention, expected, rtol=1e-5, atol=1e-6)


def test_map_layer_selects_the_layer():
    grid = (4, 4)
    features = _features(grid)
    captured = []
    first = _head(num_layers=2, map_layer=0).eval()
    last = _head(num_layers=2, map_layer=-1).eval()
    last.load_state_dict(first.state_dict())
    last.layers[1].register_forward_hook(lambda module, inputs, output: captured.append(output[1]))
    out_first, out_last = first(features, grid), last(features, grid)
    torch.testing.assert_close(out_first.logits, out_last.logits)  # same network, only the map differs
    assert last.map_layer == 1
    assert torch.equal(out_last.attention, captured[0])
    assert not torch.allclose(out_first.attention, out_last.attention)


# -------------------------------------------------------------------------------------- learning


def test_gradients_reach_queries_features_and_classifier():
    text = torch.randn(5, 24)
    head = _head(query_init=text, num_layers=2)
    features = _features((4, 4)).requires_grad_(True)
    out = head(features, (4, 4))
    (out.logits.sum() + out.attention.square().sum()).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name in ("query_embed", "query_proj.weight", "classifier.weight", "input_proj.weight"):
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert "query_text" in head.state_dict() and not head.query_text.requires_grad


def test_query_init_sets_the_initial_queries():
    text_a, text_b = torch.randn(5, 24), torch.randn(5, 24)
    head_a, head_b = _head(query_init=text_a), _head(query_init=text_b)  # same seed: same weights
    expected = F.layer_norm(head_a.query_proj(text_a), (16,))
    torch.testing.assert_close(head_a.tag_queries(), expected)
    features = _features((4, 4))
    out_a, out_b = head_a(features, (4, 4)), head_b(features, (4, 4))
    assert not torch.allclose(out_a.logits, out_b.logits)
    assert not torch.allclose(out_a.attention, out_b.attention)
    # Tags with the same name embedding start as the same query.
    same = torch.randn(1, 24).expand(5, 24)
    queries = _head(query_init=same).tag_queries()
    torch.testing.assert_close(queries, queries[:1].expand(5, -1))


def test_group_fc_is_one_linear_per_tag():
    torch.manual_seed(0)
    layer = GroupFC(num_tags=3, embed_dim=4)
    layer.bias.data = torch.tensor([0.5, -1.0, 2.0])
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        expected = torch.tensor(
            [[float(x[b, k] @ layer.weight[k] + layer.bias[k]) for k in range(3)] for b in range(2)]
        )
        torch.testing.assert_close(layer(x), expected)


def test_position_encoding_makes_attention_spatial():
    """With identical features everywhere, only the position encoding can make attention non-uniform."""
    grid = (4, 4)
    flat = torch.ones(1, 16, 12)
    no_pos = _head(pos_encoding="none")(flat, grid)
    torch.testing.assert_close(no_pos.attention, torch.full((1, 5, 16), 1 / 16))
    with_pos = _head(pos_encoding="sincos")(flat, grid)
    assert with_pos.attention.std(dim=-1).min() > 1e-4
    # Without position, attention follows content: permuting the positions permutes the attention.
    features = _features(grid)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    head = _head(pos_encoding="none")
    torch.testing.assert_close(head(features[:, perm], grid).attention, head(features, grid).attention[:, :, perm])


def test_tag_head_localises_a_planted_pattern():
    """Synthetic sanity check: tag k is present iff pattern k is planted somewhere in the noise.

    Trained only on presence labels, the tag's attention should peak where its pattern is. A few
    seconds on CPU; the bound leaves room for seed-to-seed variation.
    """
    grid, dim, num_tags, batch, steps = (6, 6), 8, 3, 48, 120
    generator = torch.Generator().manual_seed(0)
    patterns = 3.0 * F.normalize(torch.randn(num_tags, dim, generator=generator), dim=1)

    def sample():
        features = 0.5 * torch.randn(batch, 36, dim, generator=generator)
        present = torch.rand(batch, num_tags, generator=generator) < 0.5
        where = torch.randint(0, 36, (batch, num_tags), generator=generator)
        planted = F.one_hot(where, 36).float() * present.unsqueeze(-1)  # (B, K, N)
        features = features + torch.einsum("bkn,kd->bnd", planted, patterns)
        return features, present.float(), where

    torch.manual_seed(0)
    head = TagHead(num_tags, dim, embed_dim=32, num_heads=4)
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        features, labels, _ = sample()
        loss = F.binary_cross_entropy_with_logits(head(features, grid).logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    features, labels, where = sample()
    with torch.no_grad():
        out = head(features, grid)
    hits = out.attention.argmax(dim=-1) == where
    pointing = hits[labels.bool()].float().mean().item()
    accuracy = ((out.logits > 0).float() == labels).float().mean().item()
    assert accuracy > 0.9, accuracy
    assert pointing > 0.8, pointing  # chance is 1/36


# ----------------------------------------------------------------------------------- bad inputs


def test_forward_rejects_bad_features():
    head = _head()
    with pytest.raises(ValueError, match=r"expects features \(B, N, 12\), got shape \(2, 16, 11\)"):
        head(torch.zeros(2, 16, 11), (4, 4))
    with pytest.raises(ValueError, match=r"expects features"):
        head(torch.zeros(16, 12), (4, 4))
    with pytest.raises(ValueError, match=r"grid \(4, 5\) has 20 cells but features have N=16"):
        head(torch.zeros(2, 16, 12), (4, 5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embed_dim": 18}, r"embed_dim \(18\) must be divisible by num_heads \(4\)"),
        ({"num_layers": 2, "map_layer": 2}, r"map_layer must be in \[-2, 1\]"),
        ({"pos_encoding": "learned"}, "pos_encoding must be one of"),
        ({"query_init": torch.zeros(4, 8)}, r"query_init must be \(num_tags=5, d_text\), got shape \(4, 8\)"),
        ({"num_tags": 0}, "num_tags must be >= 1"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _head(**kwargs)


# ---------------------------------------------------------------------------- position encoding


def test_sincos_position_encoding_values():
    grid, dim = (4, 6), 10  # 2 bands per axis, 2 channels of padding
    encoding = sincos_position_encoding(grid, dim)
    assert encoding.shape == (24, 10)
    assert torch.equal(encoding[:, 8:], torch.zeros(24, 2))
    rows = torch.arange(24) // 6
    cols = torch.arange(24) % 6
    y = (rows + 0.5) / 4 * 2 - 1
    x = (cols + 0.5) / 6 * 2 - 1
    # Lowest band: one cycle over the image; highest band: the axis' Nyquist frequency (n / 2).
    torch.testing.assert_close(encoding[:, 0], torch.sin(math.pi * y))
    torch.testing.assert_close(encoding[:, 1], torch.sin(math.pi * 2.0 * y))
    torch.testing.assert_close(encoding[:, 3], torch.cos(math.pi * 2.0 * y))
    torch.testing.assert_close(encoding[:, 5], torch.sin(math.pi * 3.0 * x))
    assert len({tuple(row.tolist()) for row in encoding}) == 24  # every cell is distinguishable


def test_sincos_position_encoding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dim 4 is too small for a 3D position encoding"):
        sincos_position_encoding((2, 2, 2), 4)
    with pytest.raises(ValueError, match="positive sizes"):
        sincos_position_encoding((2, 0), 8)


# ------------------------------------------------------------------------------------- map helpers


@pytest.mark.parametrize("grid, size", [((4, 3), (16, 12)), ((2, 3, 2), (8, 12, 6))])
def test_upsample_maps_normalisations(grid, size):
    torch.manual_seed(0)
    maps = torch.rand(2, 3, *grid)
    spatial = tuple(range(2, 2 + len(grid)))
    as_distribution = upsample_maps(maps, size)
    assert as_distribution.shape == (2, 3, *size)
    torch.testing.assert_close(as_distribution.sum(dim=spatial), torch.ones(2, 3))
    assert (as_distribution >= 0).all()
    peaks = upsample_maps(maps, size, normalize="max")
    torch.testing.assert_close(peaks.flatten(2).amax(dim=2), torch.ones(2, 3))
    raw = upsample_maps(maps, size, normalize="none")
    assert raw.max() <= maps.max() + 1e-6 and raw.min() >= maps.min() - 1e-6  # interpolation only


def test_upsample_keeps_the_peak_in_its_cell():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 2, 1] = 1.0
    up = upsample_maps(maps, (16, 16), normalize="none")
    row, col = divmod(int(up.flatten().argmax()), 16)
    assert 8 <= row < 12 and 4 <= col < 8  # inside the 4x4 block of cell (2, 1)
    uniform = torch.full((1, 2, 4, 4), 1 / 16)
    torch.testing.assert_close(upsample_maps(uniform, (16, 16), normalize="none"), torch.full((1, 2, 16, 16), 1 / 16))
    nearest = upsample_maps(maps, (8, 8), mode="nearest", normalize="none")
    assert nearest.sum() == 4 and nearest[0, 0, 4:6, 2:4].sum() == 4


def test_upsample_maps_rejects_bad_arguments():
    maps = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="mode must be 'bilinear' or 'nearest' for 2D maps, got 'trilinear'"):
        upsample_maps(maps, (8, 8), mode="trilinear")
    with pytest.raises(ValueError, match=r"size must be 2 positive sizes"):
        upsample_maps(maps, (8, 8, 8))
    with pytest.raises(ValueError, match=r"maps must be \(B, K, H, W\)"):
        upsample_maps(torch.rand(2, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="how must be one of"):
        upsample_maps(maps, (8, 8), normalize="softmax")


def test_normalize_maps_keeps_empty_maps_at_zero():
    maps = torch.zeros(1, 2, 3, 3)
    maps[0, 1, 0, 0] = 2.0
    for how in ("sum", "max"):
        out = normalize_maps(maps, how)
        assert torch.equal(out[0, 0], torch.zeros(3, 3))
        assert out[0, 1, 0, 0] == 1.0


def test_scale_maps_by_probability():
    maps = torch.ones(1, 3, 2, 2, 2)
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])  # probabilities 1/2, 3/4, 1/4
    scaled = scale_maps_by_probability(maps, logits)
    torch.testing.assert_close(scaled[0, :, 1, 1, 1], torch.tensor([0.5, 0.75, 0.25]))
    with pytest.raises(ValueError, match=r"logits must be \(B, K\) = \(1, 3\)"):
        scale_maps_by_probability(maps, torch.zeros(1, 4))
