"""q/k/v products of layer 0 under different float orders, cached."""
import ggml_matmul as gm
import numpy as np
import torch
from common import load, save

from kamado.kernels.activations import quantize_q8_0


def product(t, h, method):
    """t: QuantTensor (legacy type); h (M, K) float32 numpy -> (M, N) float32."""
    x = torch.from_numpy(h)
    rows = np.asarray(t.raw.numpy()).reshape(t.shape[0], -1)
    wq, wd = gm._legacy_parts(rows, t.qtype)
    xq, xd = quantize_q8_0(x)
    if method == "serial":
        return gm._serial_product(xq, xd, wq, wd).numpy()
    if method == "lanes":
        return gm._lane_product(xq, xd, wq, wd).numpy()
    if method == "exact":  # float64 sum of the exact per-block terms, rounded once
        dots = torch.einsum("mbk,nbk->mnb", xq.double(), wq.double())
        scale = xd.double()[:, None, :] * wd.double()[None, :, :]
        return (dots * scale).sum(-1).float().numpy()
    if method == "serial_mul":  # C += float(dot) * (d_w*d_x) rounded separately (no fma)
        dots = torch.bmm(xq.transpose(0, 1), wq.float().permute(1, 2, 0))
        scale = xd.t()[:, :, None] * wd.t()[:, None, :]
        c = torch.zeros(dots.shape[1:])
        for b in range(dots.shape[0]):
            c = c + dots[b] * scale[b]
        return c.numpy()
    raise ValueError(method)


def qkv(h, methods, tensor):
    out = []
    for n, meth in zip("qkv", methods):
        key = f"{n}0_{meth}"
        try:
            out.append(load(key))
        except FileNotFoundError:
            t = tensor(f"blk.0.attn_{n}.weight")
            with torch.inference_mode():
                r = np.stack([product(t, h[c], meth) for c in range(h.shape[0])])
            save(key, r)
            out.append(r)
    return out
