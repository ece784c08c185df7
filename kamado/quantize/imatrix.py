"""Compute an importance matrix as llama-imatrix does (tools/imatrix/imatrix.cpp).

For every matrix multiplication with a `blk.*` weight, the activations entering it are squared and
summed per column (`in_sum2`), and the rows seen are counted (one count per dense weight; for expert
weights one per expert, counting the tokens routed to it). The text is cut into chunks of n_ctx tokens
with BOS first, as llama-perplexity does, and the perplexity of each chunk's second half is reported
along the way. Output: the GGUF imatrix format (general.type = imatrix) or the legacy .dat format.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kamado.engine.engine import LLAMACPP_UBATCH
from kamado.engine.scoring import second_half_nll
from kamado.gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from kamado.models import solo_attend

_EXPERT = re.compile(r"^(?P<name>.+)\[(?P<e>\d+)\]$")  # the models name expert slices NAME[e]


@dataclass
class Entry:
    values: np.ndarray  # float32 (n_mat, n_cols): sums of squared activations
    counts: np.ndarray  # int64 (n_mat,)


@dataclass
class Collector:
    """Accumulates llama-imatrix's statistics from the linear layers it wraps: float32 sums, row after row in the order
    the rows come (llama-imatrix's own summation, so that equal inputs give equal bits)."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, name: str, expert: int, n_mat: int, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float().numpy()
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(np.zeros((n_mat, x.shape[-1]), np.float32), np.zeros(n_mat, dtype=np.int64))
        # np.add.accumulate adds row by row (no pairwise summation): acc + r0^2, then + r1^2, ...
        e.values[expert] = np.add.accumulate(np.concatenate([e.values[expert][None], x * x]), axis=0)[-1]
        e.counts[expert] += x.shape[0]


class _Recording:
    """A linear layer that reports its input to a Collector, then computes as before."""

    def __init__(self, linear, collector: Collector, name: str, expert: int, n_mat: int):
        self.linear, self.collector, self.name, self.expert, self.n_mat = linear, collector, name, expert, n_mat

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.collector.add(self.name, self.expert, self.n_mat, x)
        return self.linear(x)

    def __getattr__(self, attr):
        return getattr(self.linear, attr)


def attach(model, collector: Collector) -> int:
    """Wrap every linear layer of `model` whose weight is a blk.* tensor; returns how many were wrapped."""
    wrapped = 0

    def wrap(linear, n_mat: int):
        nonlocal wrapped
        name = getattr(getattr(linear, "tensor", None), "name", "")
        m = _EXPERT.match(name)
        base, expert = (m["name"], int(m["e"])) if m else (name, 0)
        if not base.startswith("blk."):
            return linear
        wrapped += 1
        return _Recording(linear, collector, base, expert, n_mat)

    for layer in model.layers:
        for attr, value in vars(layer).items():
            if isinstance(value, list) and value and hasattr(value[0], "tensor"):
                setattr(layer, attr, [wrap(v, len(value)) for v in value])
            elif hasattr(value, "tensor") and callable(value):
                setattr(layer, attr, wrap(value, 1))
    return wrapped


@dataclass
class ImatrixResult:
    collector: Collector
    chunk_size: int
    chunk_count: int
    ppl: float
    ppl_error: float


# llama-imatrix's defaults: batches of N_BATCH tokens hold max(1, N_BATCH // n_ctx) chunks as parallel sequences, and
# llama_decode splits them into ubatches of LLAMACPP_UBATCH rows taken equally from every sequence (split_equal).
N_BATCH = 2048


def _group_attend(n_layer: int, sizes: list[int]):
    """An `attend` over rows of several sequences side by side (sizes: each one's rows in the current ubatch, set by
    the caller), each sequence with its own keys and values."""
    attends = [solo_attend(n_layer) for _ in sizes]

    def attend(spec, q, k, v):
        out, a = [], 0
        for one, n in zip(attends, sizes, strict=True):
            out.append(one(spec, q[a : a + n], k[a : a + n], v[a : a + n]))
            a += n
        return torch.cat(out)

    return attend


def _run_group(model, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Hidden states of chunks run as llama-imatrix runs them: ubatch by ubatch, each sequence's next rows in turn.

    Rows enter every matmul (and so the collector) in llama-imatrix's order, and each product sees the same rows at
    once as llama.cpp's (the Q4_K kernel groups rows by 4 across the ubatch)."""
    n_ctx, step = len(chunks[0]), max(1, LLAMACPP_UBATCH // len(chunks))
    sizes = [0] * len(chunks)
    attend = _group_attend(model.cfg.n_layer, sizes)
    hidden = []
    for a in range(0, n_ctx, step):
        b = min(n_ctx, a + step)
        sizes[:] = [b - a] * len(chunks)
        h = model.hidden(torch.cat([c[a:b] for c in chunks]), torch.arange(a, b).repeat(len(chunks)), attend)
        hidden.append(h.reshape(len(chunks), b - a, -1))
    return list(torch.cat(hidden, dim=1))


def compute_imatrix(model, tokens: list[int], n_ctx: int, bos_id: int | None, n_chunks: int | None = None,
                    on_chunk: Callable[[int, float], None] | None = None) -> ImatrixResult:
    """Run the chunks through `model` as llama-imatrix batches them, collecting activations; on_chunk(i, running_ppl)
    after each chunk."""
    collector = Collector()
    if attach(model, collector) == 0:
        raise ValueError("the model has no blk.* linear layers to collect activations from")
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of n_ctx={n_ctx}")
    count = available if n_chunks is None or n_chunks <= 0 else min(n_chunks, available)
    nll: list[float] = []
    per_batch = max(1, N_BATCH // n_ctx)
    with torch.inference_mode():
        for first in range(0, count, per_batch):
            chunks = [torch.tensor(tokens[c * n_ctx : (c + 1) * n_ctx]) for c in range(first, min(count, first + per_batch))]
            if bos_id is not None:
                for chunk in chunks:
                    chunk[0] = bos_id
            for i, (chunk, hidden) in enumerate(zip(chunks, _run_group(model, chunks), strict=True)):
                nll += second_half_nll(model, hidden, chunk)
                if on_chunk:
                    on_chunk(first + i + 1, math.exp(sum(nll) / len(nll)))
    mean = sum(nll) / len(nll)
    # llama-perplexity's error estimate: standard error of the mean NLL, carried through exp.
    var = sum((v - mean) ** 2 for v in nll) / max(1, len(nll) - 1)
    return ImatrixResult(collector, n_ctx, count, math.exp(mean), math.exp(mean) * math.sqrt(var / len(nll)))


def write_gguf(result: ImatrixResult, path: str | Path, datasets: list[str]) -> None:
    """llama-imatrix's GGUF format: NAME.in_sum2 (float32 sums) and NAME.counts per entry, names sorted."""
    w = GGUFWriter(path)
    w.add_field("general.type", "imatrix")
    w.add_field("imatrix.datasets", list(datasets), GGUFValueType.ARRAY, GGUFValueType.STRING)
    w.add_field("imatrix.chunk_count", result.chunk_count, GGUFValueType.UINT32)
    w.add_field("imatrix.chunk_size", result.chunk_size, GGUFValueType.UINT32)
    for name in sorted(result.collector.entries):
        e = result.collector.entries[name]
        n_mat, n_cols = e.values.shape
        # ggml drops trailing dimensions of 1 when it writes a tensor's shape.
        sums_shape, counts_shape = ((n_cols,), (1,)) if n_mat == 1 else ((n_mat, n_cols), (n_mat, 1))
        w.add_tensor(f"{name}.in_sum2", GGMLQuantizationType.F32, sums_shape, e.values.astype(np.float32).reshape(sums_shape))
        w.add_tensor(f"{name}.counts", GGMLQuantizationType.F32, counts_shape, e.counts.astype(np.float32).reshape(counts_shape))
    w.write()


def write_dat(result: ImatrixResult, path: str | Path, dataset: str) -> None:
    """The legacy .dat format: per entry (sum / count) * ncall, then the chunk count and the dataset name."""
    out = bytearray(struct.pack("<i", len(result.collector.entries)))
    for name in sorted(result.collector.entries):
        e = result.collector.entries[name]
        ncall = (int(e.counts.max()) + result.chunk_size - 1) // result.chunk_size
        counts = np.where(e.counts == 0, 1, e.counts).astype(np.float32)[:, None]
        values = np.where(e.counts[:, None] == 0, np.float32(1), e.values.astype(np.float32))
        data = (values / counts * np.float32(ncall)).astype("<f4").reshape(-1)
        encoded = name.encode("utf-8")
        out += struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, data.size) + data.tobytes()
    encoded = dataset.encode("utf-8")
    out += struct.pack("<ii", result.chunk_count, len(encoded)) + encoded
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(bytes(out))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
