"""The CPU backend: quantized weights repacked once into int8 rows with one float scale per row.

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
error of at most max|row|/254 per weight, small beside the block format's own; llama.cpp itself
rounds activations to 8 bits in the same products. int4 packing would be exact only for Q4_0/Q4_K.
So: M <= DECODE_ROWS uses `_weight_int8pack_mm`; larger M converts int8 -> bf16 per row chunk and
uses the AMX bf16 matmul, scaling the float32 result afterwards. Both compute each output row
independently of the others in the batch (batch-invariant). Float-typed tensors (F32/F16/BF16)
are computed in float32 as stored.

Weights of FBGEMM_MIN_WEIGHTS and more (the output projections, a third to a half of a decode step's
time for these small models) go through fbgemm's int8 GEMM instead, for every batch size: it reads
them at close to memory bandwidth, and perplexity chunks no longer convert them to bf16. Measured
2026-11-25 on a quiet 16-core Xeon (AVX-512, 300 MiB L3) pinned to 2 cores (torch 2.11, random weights,
one decode row, ms per step): Qwen 2.5 0.5B's output projection int8pack 14.1, fbgemm 10.3 (fbgemm
with one 8-bit pass 6.9); its 96 layer products int8pack 35.1, fbgemm 36.1 (one pass 21.6); Gemma 3
270M's 72 layer products int8pack 11.1, fbgemm 15.3 (one pass 6.8). So the layer products stay on
int8pack: fbgemm wins there only with one 8-bit pass over the activations, which is ~40x less accurate
than bf16 activations on rows with outlier channels (see _fbgemm_linear), and it is slower for prefill.

Memory: each weight is held once, as int8 (fbgemm's packed copy or int8pack's codes) plus a scale per
row; the GGUF file's pages are released as soon as their rows are repacked (QuantTensor.release_pages),
fbgemm's own reference to the codes it packed is emptied, and packing goes in row parts so that a load
never holds more than a part twice.
"""

from __future__ import annotations

import warnings

import torch

from kamado.kernels.heap import release_free_heap
from kamado.kernels.linear import CHUNK_ELEMENTS, QuantTensor, ReferenceLinear, _check_2d

DECODE_ROWS = 16
# Weights from which on fbgemm computes every product (the output projections); smaller ones stay on
# int8pack (decode) and bf16 AMX (prefill): see the measurements above.
FBGEMM_MIN_WEIGHTS = 1 << 24


class Int8Linear:
    def __init__(self, tensor: QuantTensor, *stacked: QuantTensor):
        """`stacked`: further quantized weights read by the same input (fused_linear), computed in the same call."""
        parts = (tensor, *stacked)
        for part in parts:
            _check_2d(part)
        self.tensor = tensor  # ReferenceLinear.rows' source: meaningful only unstacked (the output projection)
        self.out_features, self.in_features = sum(part.shape[0] for part in parts), tensor.shape[1]
        self.float_weight = tensor.float_view()
        self.packed = None
        if self.float_weight is not None:
            return
        if self.out_features * self.in_features >= FBGEMM_MIN_WEIGHTS:
            self.packed = _fbgemm_pack_parts(parts)
        else:
            codes, scales = zip(*(_requantize_int8(part) for part in parts), strict=True)
            self.qweight, self.scale = (torch.cat(codes), torch.cat(scales)) if stacked else (codes[0], scales[0])
            self.scale_bf16 = self.scale.to(torch.bfloat16)
            release_free_heap()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:
            return x @ self.float_weight.float().T
        if self.packed is not None:
            step = max(1, CHUNK_ELEMENTS // (2 * self.out_features))  # bounds fbgemm's (2 x rows, out) float32 output
            return torch.cat([_fbgemm_linear(x[a : a + step], self.packed) for a in range(0, x.shape[0], step)])
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


def fused_linear(tensors: list[QuantTensor]) -> Int8Linear | None:
    """One linear for weights that read the same input (q/k/v, gate/up): their outputs side by side from one call.

    A decode step is dominated by the fixed cost of each small product (126 int8pack calls for Gemma 3 270M
    without fusion, 72 with it). Every row keeps its own scale, so the outputs equal the separate layers'.
    None when a weight is float-typed (computed as stored) or the input widths differ.
    """
    if any(t.float_view() is not None or len(t.shape) != 2 or t.shape[1] != tensors[0].shape[1] for t in tensors):
        return None
    return Int8Linear(*tensors)


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
        tensor.release_pages(slice(a, b))  # repacked: the file's copy need not stay resident
    return qweight, scale


# fbgemm packs a weight into its own layout and keeps the int8 tensor it was given beside it (for unpacking, which
# kamado never does). Packing in row parts bounds the memory a load needs at once to about twice a part (its int8
# codes and their packed copy); each part's codes are freed once packed. But every part costs a decode step ~0.3 ms
# more (Gemma 3's 262144x640 output, one thread: one part 16.2 ms, three 17.4, eleven of 2^24 weights 19.1), so
# parts are large: loading Gemma 3 270M peaks ~60 MiB (2^24) or ~130 MiB (2^26) above what the weights keep.
PACK_PART_WEIGHTS = 1 << 26


def _fbgemm_pack_parts(tensors: tuple[QuantTensor, ...]) -> list:
    packed = []
    for tensor in tensors:
        rows, cols = tensor.shape
        step = max(1, PACK_PART_WEIGHTS // cols)
        packed += [_fbgemm_pack(tensor, slice(a, min(rows, a + step))) for a in range(0, rows, step)]
    return packed


def _fbgemm_pack(tensor: QuantTensor, rows: slice):
    codes, scale = _requantize_int8(tensor, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch deprecates quantized tensors; fbgemm's int8 GEMV is still the fastest here
        q = torch._make_per_channel_quantized_tensor(codes, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(q, None)
    # linear_prepack keeps `q` itself as the weight to unpack: give its bytes back (packed holds its own copy).
    q.untyped_storage().resize_(0)
    del codes, q
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


def _fbgemm_linear(x: torch.Tensor, packed: list) -> torch.Tensor:
    m = x.shape[0]
    norm = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    u = x * (_LEVELS / norm)
    rows = torch.cat([u, (u - torch.round(u)) * _RESIDUAL_GAIN])
    scale = norm / _LEVELS
    parts = []
    for part in packed:
        y = _fbgemm_product(rows, 1.0, 128, part)
        high, residual = y[:m], y[m:]
        parts.append(high.add_(residual.mul_(1.0 / _RESIDUAL_GAIN)).mul_(scale))
    return torch.cat(parts, dim=-1)
