import math

import numpy as np
import pytest
import torch

from kamado.models import ModelError, load_model
from kamado.models.blocks import Rope, RopeSpec, attention
from tests.models.tiny import tiny_model


def test_attention_matches_sdpa_with_gqa_and_causal_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(5, 4, 8, generator=g), torch.randn(5, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)
    k, v = k.half().float(), v.half().float()  # attention() rounds keys/values to fp16, as the F16 KV cache does
    pos = torch.arange(5)
    out = attention(q, k, v, pos, pos, 1 / math.sqrt(8))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1), is_causal=True
    )
    torch.testing.assert_close(out, ref.transpose(0, 1).reshape(5, 32))


def test_sliding_window_hides_old_keys():
    q, k = torch.randn(1, 1, 4), torch.randn(6, 1, 4)
    v = torch.arange(6.0)[:, None, None].expand(6, 1, 4)
    out = attention(q, k, v, torch.tensor([5]), torch.arange(6), 1.0, window=1)
    assert torch.allclose(out, torch.full((1, 4), 5.0))  # only the query's own position is visible


def test_rope_norm_and_neox_pairings_are_permutations_of_each_other():
    x = torch.randn(3, 2, 8)
    pos = torch.tensor([0, 3, 7])
    neox, norm = Rope(RopeSpec(8, 10000.0, True)), Rope(RopeSpec(8, 10000.0, False))
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs -> split halves
    a = neox.apply(x[..., perm], *neox.cos_sin(pos))
    b = norm.apply(x, *norm.cos_sin(pos))[..., perm]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], x[0][..., perm])  # position 0 does not rotate
    torch.testing.assert_close(a.norm(dim=-1), x.norm(dim=-1))


def test_unknown_architecture_is_named_with_the_supported_list():
    class Reader:
        metadata = {"general.architecture": "mamba"}
        tensors = {}

    with pytest.raises(ModelError, match=r"unknown architecture 'mamba'; supported architectures: .*gemma3.*qwen2"):
        load_model(Reader())


def test_missing_tensor_is_named():
    with pytest.raises(ModelError, match="tensor blk.0.ffn_down.weight is missing"):
        tiny_model("qwen2", drop="blk.0.ffn_down.weight")


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("n_dims", [8, 4])  # whole heads, and a partial rotation (the rest passes through)
def test_rope_rotates_each_pair_exactly_as_pairwise_float32_arithmetic(neox, n_dims):
    rope = Rope(RopeSpec(n_dims, 10000.0, neox))
    x = torch.randn(3, 5, 8)
    pos = torch.tensor([0, 3, 700])
    cos, sin = rope.cos_sin(pos)
    half = n_dims // 2
    a_idx = torch.arange(half) if neox else torch.arange(0, n_dims, 2)
    b_idx = a_idx + half if neox else a_idx + 1
    want = x.clone()
    a, b, c, s = x[..., a_idx], x[..., b_idx], cos[:, None, :], sin[:, None, :]
    want[..., a_idx], want[..., b_idx] = a * c - b * s, a * s + b * c
    assert torch.equal(rope.apply(x, cos, sin), want)  # same products and sums, bit for bit



@pytest.mark.parametrize("n_tok, n_keys", [(1, 1), (1, 40), (5, 9), (70, 70)])  # decode, prefill, a one-key start
@pytest.mark.parametrize("softcap, window", [(0.0, 0), (30.0, 4)])
def test_attention_equals_the_einsum_formulation_bit_for_bit(n_tok, n_keys, softcap, window):
    g = torch.Generator().manual_seed(n_tok * 100 + n_keys)
    q, k, v = torch.randn(n_tok, 6, 16, generator=g), torch.randn(n_keys, 2, 16, generator=g), torch.randn(n_keys, 2, 16, generator=g)
    q_pos, k_pos = torch.arange(n_keys - n_tok, n_keys), torch.arange(n_keys)
    qg = q.reshape(n_tok, 2, 3, 16)
    scores = torch.einsum("tkgd,skd->kgts", qg, k.half().float())
    scores = torch.tanh(scores * (0.25 / softcap)) * softcap if softcap else scores * 0.25
    delta = q_pos[:, None] - k_pos[None, :]
    visible = (delta >= 0) & (delta < window) if window else delta >= 0
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    want = torch.einsum("kgts,skd->tkgd", probs, v.half().float()).reshape(n_tok, 96)
    assert torch.equal(attention(q, k, v, q_pos, k_pos, 0.25, window, softcap), want)


def test_rope_angles_are_ggmls_float32_products():
    # ggml_rope_cache_init: theta = p; per pair: use theta, then theta *= theta_scale, each product rounded to float32
    rope = Rope(RopeSpec(128, 1000000.0, True))
    scale = np.float32(rope.theta_scale.item())
    positions = torch.tensor([0, 1, 7, 300, 4095, 70000])
    got = rope.thetas(70001)[positions].numpy()
    for row, p in zip(got, positions.tolist(), strict=True):
        theta, expected = np.float32(p), []
        for _ in range(64):
            expected.append(theta)
            theta = np.float32(theta * scale)
        assert np.array_equal(row, np.array(expected, dtype=np.float32)), p
