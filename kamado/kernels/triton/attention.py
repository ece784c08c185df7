"""Decode attention over the paged KV cache: one query row per sequence, keys read in place through a slot table.

The eager version (kamado.engine.cuda_graph.paged_attention) gathers every row's keys and values into float32 copies
and runs ~12 kernels per layer. Here one program handles one query head of one row over a range of keys, with an
online softmax (flash-decoding): the keys of a long context are split over several programs when rows x heads alone
would leave most of the GPU idle, and a second small kernel merges their partial results.
Arithmetic: fp16 keys/values as the cache holds them, float32 scores, softmax and sums (as paged_attention).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kamado.kernels.triton.ops import _tanh

BLOCK_S = 32  # keys per step of a program
TARGET_PROGRAMS = 264  # two per SM of an H100/H200: enough programs in flight to keep HBM busy


@triton.jit
def _decode_attention_kernel(q_ptr, kc_ptr, vc_ptr, table_ptr, pos_ptr, out_ptr, m_ptr, l_ptr,
                             H, GROUP, HKV, D, DV, S, CHUNK, stride_q_row, stride_q_head, stride_table,
                             scale, softcap, window,
                             SPLIT: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_S: tl.constexpr,
                             BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    row = (pid // H).to(tl.int64)
    head = pid % H
    kv_head = head // GROUP
    pos = tl.load(pos_ptr + row).to(tl.int32)
    od = tl.arange(0, BLOCK_D)
    odv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + row * stride_q_row + head * stride_q_head + od, mask=od < D, other=0.0)
    lo = split * CHUNK
    if window > 0:
        lo = tl.maximum(lo, pos - window + 1)
    hi = tl.minimum(split * CHUNK + CHUNK, pos + 1)
    hi = tl.minimum(hi, S)
    m = tl.full([1], float("-inf"), tl.float32)
    l_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_S):
        keys = start + tl.arange(0, BLOCK_S)
        visible = keys < hi
        slots = tl.load(table_ptr + row * stride_table + keys, mask=visible, other=0)
        k = tl.load(kc_ptr + (slots * HKV + kv_head)[:, None] * D + od[None, :], mask=visible[:, None] & (od < D)[None, :], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        if SOFTCAP:
            s = _tanh(s * (scale / softcap)) * softcap
        else:
            s = s * scale
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m - m_new)
        v = tl.load(vc_ptr + (slots * HKV + kv_head)[:, None] * DV + odv[None, :], mask=visible[:, None] & (odv < DV)[None, :], other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        m = m_new
    out = out_ptr + (pid.to(tl.int64) * tl.num_programs(1) + split) * DV + odv
    if SPLIT:  # partial results, merged by _merge_kernel (an empty range leaves m = -inf, l = 0)
        tl.store(out, acc, mask=odv < DV)
        tl.store(m_ptr + pid * tl.num_programs(1) + split + tl.arange(0, 1), m)
        tl.store(l_ptr + pid * tl.num_programs(1) + split + tl.arange(0, 1), l_sum)
    else:
        tl.store(out, acc / l_sum, mask=odv < DV)


@triton.jit
def _merge_kernel(part_ptr, m_ptr, l_ptr, out_ptr, DV, SPLITS: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, SPLITS)
    odv = tl.arange(0, BLOCK_DV)
    m = tl.load(m_ptr + pid * SPLITS + sp)
    l_sum = tl.load(l_ptr + pid * SPLITS + sp)
    m_all = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_all))
    part = tl.load(part_ptr + (pid * SPLITS + sp)[:, None] * DV + odv[None, :], mask=(odv < DV)[None, :], other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(l_sum * w, axis=0)
    tl.store(out_ptr + pid * DV + odv, out, mask=odv < DV)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_table: torch.Tensor,
                     positions: torch.Tensor, scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """paged_attention's contract: q (B, H, D) float32 (rows and heads may be strided), caches (n_slots, Hkv, D*),
    slot_table (B, S) int64, positions (B,) int64 -> (B, H*Dv) float32. Row b attends to its keys 0..positions[b]
    (within `window` of it when window > 0)."""
    n_rows, n_head, head_dim = q.shape
    n_kv, dv = k_cache.shape[1], v_cache.shape[2]
    n_keys = slot_table.shape[1]
    splits = 1
    while splits * 2 * n_rows * n_head <= TARGET_PROGRAMS and splits * 2 * BLOCK_S <= n_keys:
        splits *= 2
    chunk = triton.cdiv(triton.cdiv(n_keys, splits), BLOCK_S) * BLOCK_S
    out = torch.empty(n_rows, n_head, dv, dtype=torch.float32, device=q.device)
    part = torch.empty(n_rows * n_head, splits, dv, dtype=torch.float32, device=q.device) if splits > 1 else out
    m = torch.empty(n_rows * n_head, splits, dtype=torch.float32, device=q.device) if splits > 1 else out
    l_sum = torch.empty_like(m) if splits > 1 else out
    if n_rows:
        _decode_attention_kernel[(n_rows * n_head, splits)](
            q, k_cache, v_cache, slot_table, positions, part, m, l_sum,
            n_head, n_head // n_kv, n_kv, head_dim, dv, n_keys, chunk, q.stride(0), q.stride(1), slot_table.stride(0),
            scale, softcap or 1.0, window,
            SPLIT=splits > 1, SOFTCAP=bool(softcap), BLOCK_S=BLOCK_S,
            BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_DV=triton.next_power_of_2(dv), num_warps=4,
        )  # fmt: skip
        if splits > 1:
            _merge_kernel[(n_rows * n_head,)](part, m, l_sum, out, dv, SPLITS=splits, BLOCK_DV=triton.next_power_of_2(dv), num_warps=4)
    return out.reshape(n_rows, n_head * dv)
