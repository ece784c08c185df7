"""The CPU backend: quantized weights repacked once, into torch's packed int4 (Q4_K) or int8 rows with a scale per row.

Measured on the 2-core Xeon (AVX-512, AMX) this project targets, torch 2.13, for a 4864x896 weight:
  decode (1 row of activations): f32 matmul 0.33 ms, bf16 0.32 ms, `_weight_int8pack_mm` (bf16
  activations) 0.12 ms, `_weight_int4pack_mm_for_cpu` 0.11 ms; float32 activations make both
  packed ops 10-30x slower.
  prefill (128 rows): bf16 matmul (AMX) 0.75 ms, int8pack 7.2 ms, int8 -> bf16 conversion 0.32 ms.
Dequantizing GGUF blocks on every call in eager torch costs far more than the matmul itself, and
keeping bf16 copies doubles memory (2 bytes per weight against ~0.6 for Q4_K_M files). Every GGUF
block type (Q4_K, Q5_0, Q6_K, Q8_0, ...) is a small integer times a scale per 16-32 values, so one
int8 per weight with a per-row scale covers them all in one layout: resident size is about 1 byte
per weight (Gemma 3 270M Q4_K_M: ~1.1x the file; Qwen2.5 0.5B: ~1.2x, its input embedding stays
in the mmap and only looked-up rows are read), below the 1.3x budget. The requantization adds an
error of at most max|row|/254 per weight (1-2.6% of a weight matrix's norm on these models' Q4_K
tensors), small beside the block format's own; llama.cpp itself rounds activations to 8 bits in the
same products. So: M <= DECODE_ROWS uses `_weight_int8pack_mm`; larger M converts int8 -> bf16 per row
chunk and uses the AMX bf16 matmul, scaling the float32 result afterwards. Both compute each output
row independently of the others in the batch (batch-invariant). Float-typed tensors (F32/F16/BF16)
are computed in float32 as stored.

Q4_K weights (rows in blocks of 64) keep their own 4-bit codes instead (Int4Linear): half the bytes a
decode step streams, and no requantization. Decode reads every weight from memory once per token (the
models are 3-8x the ~40 MiB of cache a step can keep), so bytes and streaming speed set a step's time.

Weights that fbgemm_suits go through fbgemm's int8 GEMM instead, for every batch size: the output
projections (a third of a decode step for these small models; perplexity chunks no longer convert them
to bf16) and large weights with short rows. Measured 2026-12-03 on the 2-core machine itself (torch
2.13, weights streamed from memory, one decode row): int8pack reads a 4096x640 or 9728x896 weight at
~11 GB/s, fbgemm (two rows, see _fbgemm_linear) at ~18 GB/s, a plain float32 sum at ~19-21 GB/s; in a
real decode step Qwen2.5 0.5B's 24 fused gate/up products took 20 ms through int8pack and 13.7 through
fbgemm, while its down products (K = 4864, long rows that int8pack streams at ~17 GB/s) and Gemma 3
270M's smaller weights gained nothing: fbgemm's fixed cost per call (~50 us with the activation
passes) eats the difference. fbgemm with one 8-bit pass over the activations would be faster still but
is ~40x less accurate than bf16 activations on rows with outlier channels, and fbgemm is up to twice
as slow as bf16 AMX for prefill.

Memory: each weight is held once (fbgemm's packed copy, int8pack's codes or the int4 codes with a bf16
scale and offset per 32 values); the GGUF file's pages are released as soon as their rows are repacked
(QuantTensor.release_pages), fbgemm's own reference to the codes it packed is emptied, and packing goes
in row parts so that a load holds at most about three copies of one part (see PACK_PART_WEIGHTS).
"""


from __future__ import annotations

import warnings

import torch

from kamado.gguf.constants import GGMLQuantizationType
from kamado.kernels.activations import activation_rounding
from kamado.kernels.heap import mapped_empty, release_free_heap
from kamado.kernels.linear import CHUNK_ELEMENTS, QuantTensor, ReferenceLinear, _check_2d
from kamado.quants.kquants import q4_k_parts

DECODE_ROWS = 16
# Which weights fbgemm computes, for every batch size (the others: int8pack for decode, bf16 AMX for prefill); measured
# above: the output projections, and large layer weights with short rows (Qwen2.5 0.5B's fused gate/up), which int8pack
# streams from memory at ~11 GB/s against fbgemm's ~18 GB/s. Smaller weights lose more to fbgemm's fixed cost per call.
FBGEMM_MIN_WEIGHTS = 1 << 24
FBGEMM_MIN_SHORT_ROW_WEIGHTS = 1 << 22
SHORT_ROW = 2048


def fbgemm_suits(out_features: int, in_features: int) -> bool:
    weights = out_features * in_features
    return weights >= FBGEMM_MIN_WEIGHTS or (weights >= FBGEMM_MIN_SHORT_ROW_WEIGHTS and in_features < SHORT_ROW)


def _input_rounding(tensor: QuantTensor, logits: bool):
    """How a product rounds its activations: as llama.cpp does for the weight type (kamado.kernels.activations), except
    for the output projection (logits), which keeps the kernel's own activations.

    Measured 2026-12-04 (perplexity of seed 001, -c 256, mean of 6 runs whose layer-0 norm weights were scaled by
    1 + 1e-6 * noise, because a last-bit change anywhere moves Gemma 3 270M's figure by +-0.4% (sd) even on the exact
    "ggml" backend): unrounded bf16 activations on the int8 products put Gemma at -0.69% of llama.cpp's (the missing
    rounding noise lowers it), rounded layer products at +0.28% (Qwen2.5 0.5B +0.09% -> +0.23%), rounding the output's
    input as well at +0.49%; the exact "ggml" backend gives -0.01% (Qwen +0.15%). docs/NUMERICS.md has the table."""
    return (lambda x: x) if logits else activation_rounding(tensor.qtype)


class Int8Linear:
    def __init__(self, tensor: QuantTensor, *stacked: QuantTensor, logits: bool = False):
        """`stacked`: further quantized weights read by the same input (fused_linear), computed in the same call;
        `logits`: this is the output projection (see _input_rounding)."""
        parts = (tensor, *stacked)
        for part in parts:
            _check_2d(part)
        self.tensor = tensor  # ReferenceLinear.rows' source: meaningful only unstacked (the output projection)
        self.out_features, self.in_features = sum(part.shape[0] for part in parts), tensor.shape[1]
        self.round_input = _input_rounding(tensor, logits)
        self.logits = logits
        self.float_weight = tensor.float_view()
        self.packed = None
        if self.float_weight is not None:
            return
        if fbgemm_suits(self.out_features, self.in_features):
            self.packed = _fbgemm_pack_parts(parts)
        else:
            codes, scales = zip(*(_requantize_int8(part) for part in parts), strict=True)
            self.qweight, self.scale = (torch.cat(codes), torch.cat(scales)) if stacked else (codes[0], scales[0])
            self.scale_bf16 = self.scale.to(torch.bfloat16)
            release_free_heap()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.round_input(x)
        if self.float_weight is not None:
            return x @ self.float_weight.float().T
        if self.packed is not None:
            # logits get a mapping of their own (kamado/kernels/heap.py); other outputs are small
            out = mapped_empty(x.shape[0], self.out_features) if self.logits else x.new_empty(x.shape[0], self.out_features)
            step = max(1, CHUNK_ELEMENTS // (2 * self.out_features))  # bounds fbgemm's (2 x rows, out) float32 output
            for a in range(0, x.shape[0], step):
                _fbgemm_linear(x[a : a + step], self.packed, out[a : a + step])
            return out
        if x.shape[0] <= DECODE_ROWS:
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.scale_bf16).float()
        xb = x.to(torch.bfloat16)
        step = max(1, CHUNK_ELEMENTS // self.in_features)
        parts = []
        for a in range(0, self.out_features, step):
            w = self.qweight[a : a + step].to(torch.bfloat16)
            parts.append((xb @ w.T).float() * self.scale[a : a + step])
        return torch.cat(parts, dim=-1)

    rows = ReferenceLinear.rows


# torch's int4 kernel packs rows in blocks of 64 (AVX-512) and reads one scale and offset per INT4_GROUP values of a row.
INT4_ROW_BLOCK = 64
INT4_GROUP = 32


class Int4Linear:
    """Q4_K weights as torch's packed int4 (`_weight_int4pack_mm_for_cpu`): value = (q - 8) * scale + offset with the
    block's own 4-bit codes q and a bf16 scale and offset per 32 values (weights within ~3e-3 of the file's, against
    1-2.6e-2 for int8 rows, on Gemma 3 270M and Qwen2.5 0.5B). The activations are rounded as llama.cpp rounds them for
    this product (Q8_K blocks, kamado.kernels.activations), so the result is llama.cpp's up to the bf16 rounding of
    activations, scales and outputs. Measured against the int8 path (benchmarks/logprob_gap.py): first-step top-5 logprob
    gaps to llama.cpp 0.32 -> 0.25 (Gemma 3 270M) and 0.35 -> 0.25 (Qwen2.5 0.5B) on average. Perplexity of the whole
    backend (every layer product rounded as llama.cpp rounds it): docs/NUMERICS.md, 2026-12-03 (cpu-decode)."""

    def __init__(self, tensor: QuantTensor, *stacked: QuantTensor, logits: bool = False):
        """`stacked`: further Q4_K weights read by the same input (fused_linear), their rows appended; `logits`: this
        is the output projection (see _input_rounding)."""
        parts = (tensor, *stacked)
        self.out_features, self.in_features = sum(part.shape[0] for part in parts), tensor.shape[1]
        self.round_input = _input_rounding(tensor, logits)
        packed, scale_offset = zip(*(_int4_pack(part, slice(a, b)) for part in parts for a, b in _int4_row_chunks(part)), strict=True)
        self.packed, self.scale_offset = torch.cat(packed), torch.cat(scale_offset, dim=1).contiguous()
        release_free_heap()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.round_input(x).to(torch.bfloat16)
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, INT4_GROUP, self.scale_offset).float()


def int4_suits(tensor: QuantTensor) -> bool:
    return tensor.qtype == GGMLQuantizationType.Q4_K and len(tensor.shape) == 2 and tensor.shape[0] % INT4_ROW_BLOCK == 0


def _int4_row_chunks(tensor: QuantTensor) -> list[tuple[int, int]]:
    """Row ranges of whole 64-row blocks (packed independently, so the packed parts concatenate) of ~CHUNK_ELEMENTS values."""
    rows, cols = tensor.shape
    step = max(INT4_ROW_BLOCK, CHUNK_ELEMENTS // cols // INT4_ROW_BLOCK * INT4_ROW_BLOCK)
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _int4_pack(tensor: QuantTensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """int4-packed codes of the rows (n, in/2) and their (in/32, n, 2) bf16 scales and offsets; file pages released."""
    q, scale, minimum = q4_k_parts(tensor.raw[rows])
    n = rows.stop - rows.start
    packed = torch._convert_weight_to_int4pack_for_cpu(q.reshape(n, -1).int(), 1)
    scale, minimum = scale.reshape(n, -1), minimum.reshape(n, -1)
    scale_offset = torch.stack([scale, 8 * scale - minimum], dim=-1).transpose(0, 1).to(torch.bfloat16)
    tensor.release_pages()  # as _requantize_int8
    return packed, scale_offset


def fused_linear(tensors: list[QuantTensor]) -> Int8Linear | Int4Linear | None:
    """One linear for weights that read the same input (q/k/v, gate/up): their outputs side by side from one call.

    A decode step is dominated by the fixed cost of each small product (126 int8pack calls for Gemma 3 270M
    without fusion, 72 with it). Every row keeps its own scale, so the outputs equal the separate layers'.
    None when a weight is float-typed (computed as stored), the input widths differ, the weights' types round the
    activations differently (Q8_0 against Q8_K blocks), or only some of the weights would be int4 (each then keeps
    its own kernel).
    """
    if any(t.float_view() is not None or len(t.shape) != 2 or t.shape[1] != tensors[0].shape[1] for t in tensors):
        return None
    if len({activation_rounding(t.qtype) for t in tensors}) > 1:
        return None
    int4 = [int4_suits(t) for t in tensors]
    if all(int4):
        return Int4Linear(*tensors)
    return None if any(int4) else Int8Linear(*tensors)


def make_cpu_linear(tensor: QuantTensor, logits: bool = False) -> Int8Linear | Int4Linear:
    return Int4Linear(tensor, logits=logits) if int4_suits(tensor) else Int8Linear(tensor, logits=logits)


# Weights dequantized at once while repacking: dequantization and rounding hold several float32 copies of a chunk
# at a time (~5x its size), which set the load's peak memory with linear.CHUNK_ELEMENTS (~80 MiB over the codes).
REQUANTIZE_CHUNK_ELEMENTS = 1 << 20


def _requantize_int8(tensor: QuantTensor, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of the selected rows and one float32 scale per row; the rows' file pages are released as they are read."""
    first, stop, _ = rows.indices(tensor.shape[0])
    cols = tensor.shape[1]
    qweight = torch.empty(stop - first, cols, dtype=torch.int8)
    scale = torch.empty(stop - first, dtype=torch.float32)
    step = max(1, REQUANTIZE_CHUNK_ELEMENTS // cols)
    for a in range(first, stop, step):
        b = min(stop, a + step)
        w = tensor.dequantize(slice(a, b))
        s = w.abs().amax(dim=1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        qweight[a - first : b - first] = torch.round(w / s[:, None]).to(torch.int8)
        scale[a - first : b - first] = s
        tensor.release_pages()  # repacked: the file's copy need not stay resident (all of it: reads map whole folios)
    return qweight, scale


# fbgemm packs a weight into its own layout, from a quantized tensor that copies the int8 codes, and keeps that tensor
# beside it (for unpacking, which kamado never does). Packing in row parts bounds the memory a load needs at once to
# about three times a part (its codes, their quantized copy, fbgemm's packed copy) while the codes of a part are freed
# as soon as they are copied. Every part costs a decode step a product call: measured 2026-12-03 on Gemma 3 270M's
# 262144x640 output, parts of 2^26 / 2^25 / 2^24 weights took 24.2 / 24.2 / 25.0 ms a step, while loading it peaked
# ~110 MiB above what the weights keep with 2^26 (Qwen2.5 0.5B's output: ~170 MiB).
PACK_PART_WEIGHTS = 1 << 25


def _fbgemm_pack_parts(tensors: tuple[QuantTensor, ...]) -> list:
    """fbgemm's packed copies of the weights' rows, stacked weights (q|k|v, gate|up) as one part when they fit in one."""
    if sum(t.shape[0] for t in tensors) * tensors[0].shape[1] <= PACK_PART_WEIGHTS:
        return [_fbgemm_pack([(t, slice(None)) for t in tensors])]
    parts = []
    for tensor in tensors:
        rows, cols = tensor.shape
        # parts of equal size: Gemma 3's 262144x640 output in parts of at most PACK_PART_WEIGHTS made five of 52428 rows and a
        # sixth of 4, a whole product call (~50 us with the activation passes) for 4 rows; each output row is its own, so
        # the results are the same
        n_parts = -(-rows * cols // PACK_PART_WEIGHTS)
        step = -(-rows // n_parts)
        parts += [_fbgemm_pack([(tensor, slice(a, min(rows, a + step)))]) for a in range(0, rows, step)]
    return parts


def _fbgemm_pack(pieces: list[tuple[QuantTensor, slice]]):
    """fbgemm's packed copy of these rows of one or several weights, one after the other."""
    requantized = [_requantize_int8(tensor, rows) for tensor, rows in pieces]
    codes, scale = (torch.cat(p) for p in zip(*requantized, strict=True)) if len(requantized) > 1 else requantized[0]
    del requantized
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch deprecates quantized tensors; fbgemm's int8 GEMV is still the fastest here
        q = torch._make_per_channel_quantized_tensor(codes, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        del codes  # q holds its own copy
        packed = torch.ops.quantized.linear_prepack(q, None)
    # linear_prepack keeps `q` itself as the weight to unpack: give its bytes back (packed holds its own copy).
    q.untyped_storage().resize_(0)
    del q
    release_free_heap()
    return packed


# Activations enter fbgemm's int8 product as two rows of 8-bit codes: the row scaled to [-127, 127] and rounded,
# then its rounding residual (within +-0.5) scaled by 254. fbgemm's own quantization with scale 1 and zero point
# 128 then only rounds (it sees no data-dependent range), so each row's result depends on that row alone (batch
# invariance), and the pair is ~15-bit accurate: one 8-bit pass lost too much on Gemma's outlier channels
# (logprobs drifted twice as far from llama.cpp's as with bf16 activations). Decode is memory-bound, so the
# 2M rows cost about what M rows do. The two halves are combined in place, part by part: on Gemma 3's 262144-wide
# output, temporaries and a concatenation of the (2M, vocab) products took 22-28 ms of an 8-row product, in place
# 17.7 (one row 9.1-9.8 -> 8.8), with the same float32 operations in the same order (bit-identical results).
_LEVELS = 127.0
_RESIDUAL_GAIN = 254.0
_fbgemm_product = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32


def _fbgemm_linear(x: torch.Tensor, packed: list, out: torch.Tensor) -> None:
    """x @ W.T written into out (rows, out_features), one packed row part of W after the other (no concatenation)."""
    m = x.shape[0]
    norm = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    u = x * (_LEVELS / norm)
    rows = torch.cat([u, (u - torch.round(u)) * _RESIDUAL_GAIN])
    scale = norm / _LEVELS
    first = 0
    for part in packed:
        y = _fbgemm_product(rows, 1.0, 128, part)
        n = y.shape[1]
        torch.add(y[:m], y[m:].mul_(1.0 / _RESIDUAL_GAIN), out=out[:, first : first + n])
        first += n
        del y  # before the next part's product allocates its own (8 rows of Gemma 3's output held two, 3.2 MiB each)
    out.mul_(scale)
