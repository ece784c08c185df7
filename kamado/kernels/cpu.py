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
them at close to memory bandwidth (Gemma 3's 262144x640: 20 ms a row against int8pack's 28 ms, 43 ms
against 84 ms for 8 rows, one thread), and perplexity chunks no longer convert them to bf16. fbgemm
keeps its packed copy beside the original codes, so these weights take 2 bytes each.
"""

from __future__ import annotations

import warnings

import torch

from kamado.kernels.linear import CHUNK_ELEMENTS, QuantTensor, ReferenceLinear, _check_2d

DECODE_ROWS = 16
# Weights from which on fbgemm computes every product (the output projections: Gemma 3's 262144x640
# takes 20 ms per decode row against int8pack's 28 ms, 43 ms against 84 ms for 8 rows); smaller ones
# stay on int8pack (faster for a single row) and bf16 AMX (prefill).
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
        if self.float_weight is None:
            extra = _RANGE_COLUMNS.shape[1] if self.out_features * self.in_features >= FBGEMM_MIN_WEIGHTS else 0
            codes, scales = zip(*(_requantize_int8(part, extra) for part in parts), strict=True)
            qweight, scale = (torch.cat(codes), torch.cat(scales)) if stacked else (codes[0], scales[0])
            if extra:
                self.packed = _fbgemm_pack(qweight, scale)
            else:
                self.qweight, self.scale = qweight, scale
                self.scale_bf16 = self.scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:
            return x @ self.float_weight.float().T
        if self.packed is not None:
            return torch.cat([_fbgemm_linear(x[a : a + DECODE_ROWS], self.packed) for a in range(0, x.shape[0], DECODE_ROWS)])
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


def _requantize_int8(tensor: QuantTensor, zero_columns: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (rows, cols + zero_columns) with the extra columns zero, and one scale per row."""
    rows, cols = tensor.shape
    qweight = torch.zeros(rows, cols + zero_columns, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    for a, b in tensor.row_chunks():
        w = tensor.dequantize(slice(a, b))
        s = w.abs().amax(dim=1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        qweight[a:b, :cols] = torch.round(w / s[:, None]).to(torch.int8)
        scale[a:b] = s
    return qweight, scale


# fbgemm's dynamic linear quantizes its whole input to uint8 over one range taken from the tensor's
# min/max. Every row scaled to max |x| = 1, plus these two columns (zero weights), fixes that range at
# [-1, 1] whatever the batch, so each row's result depends on that row alone (batch invariance).
_RANGE_COLUMNS = torch.tensor([[-1.0, 1.0]])
_STEP = 2.0 / 255  # fbgemm's uint8 step over [-1, 1]
_ZERO_POINT = round(1.0 / _STEP)


def _fbgemm_pack(qweight: torch.Tensor, scale: torch.Tensor):
    """qweight already carries the zero columns facing _RANGE_COLUMNS."""
    rows = qweight.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch deprecates quantized tensors; fbgemm's int8 GEMV is still the fastest here
        q = torch._make_per_channel_quantized_tensor(qweight, scale.double(), torch.zeros(rows, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(q, None)


def _fbgemm_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """x @ W.T with x split into an 8-bit part and its 8-bit residual, both in one fbgemm call.

    One 8-bit pass per row loses too much (Gemma's activations have outliers: logprobs drifted twice as far
    from llama.cpp's as with bf16 activations); the residual pass makes the activations ~16-bit accurate.
    Decode is memory-bound, so 2M rows cost about what M rows do.
    """
    m = x.shape[0]
    high_norm = _row_norm(x)
    high = x / high_norm
    kept = (torch.clamp(torch.round(high / _STEP) + _ZERO_POINT, 0, 255) - _ZERO_POINT) * _STEP
    low = x - kept * high_norm
    low_norm = _row_norm(low)
    rows = torch.cat([torch.cat([high, low / low_norm]), _RANGE_COLUMNS.expand(2 * m, -1)], dim=-1)
    y = torch.ops.quantized.linear_dynamic(rows, packed, False)
    return y[:m] * high_norm + y[m:] * low_norm


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
