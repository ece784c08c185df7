"""Batched decode attention: each row bit-identical alone and in any batch, close to the per-sequence attention."""

import pytest
import torch

from kamado.engine import Engine, Request, SamplingParams, TokenEvent
from kamado.engine.decode_attention import KEY_BUCKET, attend_rows, group_rows
from kamado.models.blocks import attention
from tests.models.tiny import tiny_model

# (query heads, KV heads, head dim): one KV head (Gemma 3 270M), grouped (Qwen2.5), one query per KV head (MHA)
HEADS = [(4, 1, 256), (14, 2, 64), (8, 8, 32)]


def random_cache(n_kv, head_dim, slots=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(slots, n_kv, head_dim, generator=g).half(), torch.randn(slots, n_kv, head_dim, generator=g).half())


def batched(q, k_cache, v_cache, key_slots, scale, softcap):
    out = torch.empty(q.shape[0], q.shape[1] * v_cache.shape[2])
    for group in group_rows(key_slots):
        out[group.rows] = attend_rows(q[group.rows], k_cache, v_cache, group, scale, softcap)
    return out


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("softcap", [0.0, 50.0])
def test_a_row_is_bit_identical_alone_and_in_a_batch(heads, softcap):
    n_head, n_kv, head_dim = heads
    k_cache, v_cache = random_cache(n_kv, head_dim)
    g = torch.Generator().manual_seed(1)
    lengths = [1, 5, 63, 64, 65, 130, 990, 1000]  # across bucket edges, several rows per bucket, up to 1024 keys
    key_slots = [torch.randperm(4096, generator=g)[:n] for n in lengths]
    q = torch.randn(len(lengths), n_head, head_dim, generator=g)
    together = batched(q, k_cache, v_cache, key_slots, 0.1, softcap)
    for i in range(len(lengths)):
        alone = batched(q[i : i + 1], k_cache, v_cache, key_slots[i : i + 1], 0.1, softcap)
        assert torch.equal(alone[0], together[i]), f"row {i} ({lengths[i]} keys) changed inside the batch"
    pairs = batched(q[[6, 5]], k_cache, v_cache, [key_slots[6], key_slots[5]], 0.1, softcap)  # order and company do not matter
    assert torch.equal(pairs[0], together[6]) and torch.equal(pairs[1], together[5])


@pytest.mark.parametrize("heads", HEADS)
def test_rows_agree_with_the_per_sequence_attention(heads):
    n_head, n_kv, head_dim = heads
    k_cache, v_cache = random_cache(n_kv, head_dim, seed=2)
    g = torch.Generator().manual_seed(3)
    lengths = [3, 70, 129]
    key_slots = [torch.randperm(4096, generator=g)[:n] for n in lengths]
    q = torch.randn(len(lengths), n_head, head_dim, generator=g)
    out = batched(q, k_cache, v_cache, key_slots, 0.125, 0.0)
    for i, n in enumerate(lengths):
        expected = attention(q[i : i + 1], k_cache[key_slots[i]], v_cache[key_slots[i]], torch.tensor([n - 1]), torch.arange(n), 0.125)
        torch.testing.assert_close(out[i], expected[0], rtol=1e-5, atol=1e-6)


def test_rows_are_grouped_by_their_own_padded_width():
    groups = group_rows([torch.arange(n) for n in (10, KEY_BUCKET + 1, 64, 3)])
    assert sorted((g.rows.tolist(), g.slots.shape[1]) for g in groups) == [([0, 2, 3], KEY_BUCKET), ([1], 2 * KEY_BUCKET)]
    g = next(g for g in groups if g.rows.tolist() == [1])
    assert g.slots[0, KEY_BUCKET:].tolist() == [KEY_BUCKET] * KEY_BUCKET  # the last key (slot 64), then padding repeating it
    assert g.hidden.reshape(-1).tolist() == [False] * (KEY_BUCKET + 1) + [True] * (KEY_BUCKET - 1)


def test_requests_of_different_lengths_get_their_solo_tokens_and_logprobs():
    """Rows of unequal lengths (some past a bucket edge, past the sliding window) decoding together get bit-identical
    logprobs to when they run alone."""
    model = tiny_model("gemma3", **{"attention.sliding_window": 40})
    params = [SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=7 + i) for i in range(6)]
    requests = [Request([(3 * i + j) % 90 + 1 for j in range(n)], p, max_tokens=10, ignore_eos=True)
                for i, (n, p) in enumerate(zip((5, 30, 58, 61, 70, 100), params, strict=True))]

    def run(engine, rs):
        handles = [engine.submit(r) for r in rs]
        return [[(e.token, e.logprob) for e in h if isinstance(e, TokenEvent)] for h in handles]

    solo = [run(Engine(model, n_ctx=160), [r])[0] for r in requests]
    assert run(Engine(model, n_ctx=160, n_seq_max=6), requests) == solo
