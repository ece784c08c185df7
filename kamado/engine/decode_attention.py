"""Attention of every decode row of a step in a few batched calls over the paged KV cache, batch-invariant.

Computing each sequence's single query row separately costs ~15 small torch ops per sequence and layer (a
third of an 8-row decode step of Gemma 3 270M on the CPU went there). Here the rows are gathered into one
tensor of keys per group and attended together. A row's keys are padded to `bucket(n_keys)`, a width that
depends on that row alone, and only rows of the same width share a call: a row alone and a row inside a batch
then go through the same shapes and the same reductions, so its result is bit-identical either way (summing
over a longer padded key axis would change float32 rounding; tests/engine/test_decode_attention.py checks it).
The arithmetic is kamado.models.blocks.attention's: fp16 keys/values, float32 scores, softmax and sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Key widths are rounded up to a multiple of this: few distinct widths (rows share calls), at most 63 wasted keys a
# row, and every elementwise op sees whole SIMD vectors (a vector loop's scalar tail may round differently).
KEY_BUCKET = 64


def bucket(n_keys: int) -> int:
    return -(-n_keys // KEY_BUCKET) * KEY_BUCKET


@dataclass
class RowGroup:
    """Decode rows attending over the same padded key width: their positions in the batch, cache slots and key counts."""

    rows: torch.Tensor  # (n,) row indices in the decode batch
    slots: torch.Tensor  # (n, width) cache slot of each key; padding repeats the row's last key (hidden by the mask)
    hidden: torch.Tensor  # (n, 1, 1, width) True for padding


def group_rows(key_slots: list[torch.Tensor]) -> list[RowGroup]:
    """Rows grouped by padded width; key_slots[i] holds the cache slots of row i's visible keys, oldest first."""
    by_width: dict[int, list[int]] = {}
    for i, slots in enumerate(key_slots):
        by_width.setdefault(bucket(len(slots)), []).append(i)
    groups = []
    for width, rows in by_width.items():
        slots = torch.stack([torch.cat([key_slots[i], key_slots[i][-1:].expand(width - len(key_slots[i]))]) for i in rows])
        n_keys = torch.tensor([len(key_slots[i]) for i in rows])
        hidden = (torch.arange(width)[None, :] >= n_keys[:, None])[:, None, None, :]
        groups.append(RowGroup(torch.tensor(rows), slots, hidden))
    return groups


def attend_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: RowGroup, scale: float,
                softcap: float = 0.0) -> torch.Tensor:
    """One query row per sequence: q (n, H, D) of the group's rows -> (n, H*Dv)."""
    n, n_head, head_dim = q.shape
    n_kv, head_dim_v, width = k_cache.shape[1], v_cache.shape[2], group.slots.shape[1]
    group_size = n_head // n_kv
    flat = group.slots.reshape(-1)

    def gather(cache: torch.Tensor) -> torch.Tensor:
        """The group's keys or values as float32 (n * n_kv, width, D), one matrix per (row, kv head)."""
        rows = cache.index_select(0, flat).float()
        return rows.view(n, width, -1) if n_kv == 1 else rows.view(n, width, n_kv, -1).transpose(1, 2).reshape(n * n_kv, width, -1)

    # Explicit (row, kv head) batches of plain matrix products: einsum picks its own layout from the shapes, which
    # made a row's result depend on the batch it was in.
    keys, values = gather(k_cache), gather(v_cache)
    qg = q.float().reshape(n * n_kv, group_size, head_dim)
    if n * n_kv == 1:
        # torch's bmm computes a batch of one matrix by another route, which rounds differently from the same matrix
        # inside a larger batch: a lone row (one KV head) goes as a batch of two views of the same matrices (MKL's
        # batched product, as in company), gathered and converted once.
        qg, keys, values = qg.expand(2, -1, -1), keys.expand(2, -1, -1), values.expand(2, -1, -1)
    scores = torch.bmm(qg, keys.transpose(1, 2)).view(-1, n_kv, group_size, width)
    # in place on the fresh scores: the same arithmetic without a new tensor per step
    if softcap:
        scores = scores.mul_(scale / softcap).tanh_().mul_(softcap)
    elif scale != 1.0:  # 1.0 where the queries come scaled (ArchSpec.scale_queries: Gemma)
        scores = scores.mul_(scale)
    probs = torch.softmax(scores.masked_fill_(group.hidden, float("-inf")), dim=-1)
    out = torch.bmm(probs.view(-1, group_size, width), values)
    return out[: n * n_kv].reshape(n, n_head * head_dim_v)
