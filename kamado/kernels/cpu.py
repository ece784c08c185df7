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
"""

from __future__ import annotations

import torch

from kamado.kernels.linear import CHUNK_ELEMENTS, QuantTensor, ReferenceLinear, _check_2d

DECODE_ROWS = 16


class Int8Linear:
    def __init__(self, tensor: QuantTensor):
        _check_2d(tensor)
        self.tensor = tensor
        self.out_features, self.in_features = tensor.shape
        self.float_weight = tensor.float_view()
        if self.float_weight is None:
            self.qweight, self.scale = _requantize_int8(tensor)
            self.scale_bf16 = self.scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:
            return x @ self.float_weight.float().T
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


def _requantize_int8(tensor: QuantTensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = tensor.shape
    qweight = torch.empty(rows, cols, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    for a, b in tensor.row_chunks():
        w = tensor.dequantize(slice(a, b))
        s = w.abs().amax(dim=1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        qweight[a:b] = torch.round(w / s[:, None]).to(torch.int8)
        scale[a:b] = s
    return qweight, scale
