"""Quantize a whole GGUF model file, as llama-quantize does (src/llama-quant.cpp's driver).

Metadata is copied in order; general.quantization_version and general.file_type are set (moving them to
the end, as gguf_set_val does), then the --override-kv values and the quantize.imatrix.* keys. Tensors keep
their order; each gets the type `rules.TypeChooser` picks, is copied unchanged when that is its type
already, and is otherwise dequantized to f32 and quantized row by row (per expert, with that expert's
slice of the importance matrix). Output is written atomically by the GGUF writer.

On a GPU (device "cuda", or "auto" where CUDA is available) each tensor is copied to the device, dequantized and
quantized there with the torch twins (kamado.quants.dequantize_torch / quantize_torch: the same bytes), while a
worker thread keeps the next tensors in flight so the GPU works while earlier results are copied back and written
(kamado/quantize/device.py).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kamado.gguf import GGUFReader, GGUFValueType, GGUFWriter
from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quantize.device import DeviceCopies
from kamado.quantize.rules import UNQUANTIZED, ModelShape, Options, TypeChooser, requires_imatrix
from kamado.quants import ImatrixFile, dequantize, dequantize_torch, quantize, quantize_torch, row_bytes, set_num_threads

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
DEVICES = ("auto", "cpu", "cuda")
GPU_LOOKAHEAD = 2  # tensors quantized ahead of the writer on the GPU path


class QuantizeError(ValueError):
    """The model cannot be quantized as asked; the message says why."""


@dataclass
class Imatrix:
    """The importance weights passed to the quantizers, and the file name as given (llama-quantize records it)."""

    data: ImatrixFile
    file: str


@dataclass
class Override:
    """--override-kv KEY=TYPE:VALUE."""

    key: str
    vtype: GGUFValueType
    value: object


@dataclass
class Summary:
    original_bytes: int
    new_bytes: int
    n_elements: int
    seconds: float
    outputs: list[Path]
    plan: list[tuple[str, T, T]]  # (tensor, old type, new type)
    n_fallback: int


def parse_override(text: str) -> Override:
    """KEY=TYPE:VALUE with TYPE int, float, bool or str (llama.cpp's --override-kv)."""
    key, sep, rest = text.partition("=")
    kind, sep2, value = rest.partition(":")
    if not key or not sep or not sep2:
        raise QuantizeError(f"--override-kv {text!r}: expected KEY=TYPE:VALUE")
    if kind == "int":
        try:
            # llama.cpp stores integer overrides as uint32 of the absolute value.
            return Override(key, GGUFValueType.UINT32, abs(int(value)) & 0xFFFFFFFF)
        except ValueError:
            raise QuantizeError(f"--override-kv {text!r}: {value!r} is not an integer") from None
    if kind == "float":
        try:
            return Override(key, GGUFValueType.FLOAT32, float(value))
        except ValueError:
            raise QuantizeError(f"--override-kv {text!r}: {value!r} is not a number") from None
    if kind == "bool":
        if value not in ("true", "false"):
            raise QuantizeError(f"--override-kv {text!r}: a bool is true or false")
        return Override(key, GGUFValueType.BOOL, value == "true")
    if kind == "str":
        if len(value.encode("utf-8")) > 127:
            raise QuantizeError(f"--override-kv {text!r}: string values are limited to 127 bytes")
        return Override(key, GGUFValueType.STRING, value)
    raise QuantizeError(f"--override-kv {text!r}: unknown type {kind!r} (int, float, bool or str)")


def _imatrix_overrides(im: Imatrix) -> list[Override]:
    out = [Override("quantize.imatrix.file", GGUFValueType.STRING, im.file[:127])]
    if im.data.datasets:
        out.append(Override("quantize.imatrix.dataset", GGUFValueType.STRING, im.data.datasets[0][:127]))
    out.append(Override("quantize.imatrix.entries_count", GGUFValueType.UINT32, len(im.data.weights)))
    if im.data.chunk_count > 0:
        out.append(Override("quantize.imatrix.chunks_count", GGUFValueType.UINT32, im.data.chunk_count))
    return out


def resolve_device(device: str) -> str:
    """"cpu" or "cuda" for a --device value; auto means the GPU when CUDA is available."""
    if device not in DEVICES:
        raise QuantizeError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QuantizeError("--device cuda: no CUDA GPU is available to this process (torch.cuda.is_available() is false)")
    return device


def _quantize_on_device(raw: torch.Tensor, src_type: T, new: T, w: np.ndarray | None) -> torch.Tensor:
    """Dequantize `raw` (bytes of src_type rows, a torch tensor) and quantize to `new` on its device: the bytes, still there."""
    f32 = raw.view(torch.float32) if src_type == T.F32 else dequantize_torch(raw, src_type)
    return quantize_torch(f32, new, None if w is None else torch.from_numpy(w).to(raw.device))


def quantize_model(
    inp: str | os.PathLike,
    out: str | os.PathLike,
    opts: Options,
    *,
    allow_requantize: bool = False,
    imatrix: Imatrix | None = None,
    overrides: list[Override] = (),
    nthreads: int = 0,
    keep_split: bool = False,
    dry_run: bool = False,
    progress=None,
    device: str = "cpu",
) -> Summary:
    """Quantize `inp` into `out` on `device` (cpu, cuda or auto). progress(i, n, name) is called before each tensor."""
    start = time.perf_counter()
    device = resolve_device(device)
    reader = GGUFReader(inp)
    tensors = list(reader.tensors.values())
    weights = imatrix.data.weights if imatrix else {}
    opts.has_imatrix = bool(weights)
    chooser = TypeChooser(ModelShape.from_metadata(reader.metadata), [t.name for t in tensors], opts)
    plan = [(t, chooser.choose(t.name, t.shape, t.type)) for t in tensors]

    for t, new in plan:
        if new == t.type:
            continue
        if requires_imatrix(t.name, new, opts.file_type) and t.name not in weights and not dry_run:
            raise QuantizeError(f"tensor {t.name} would be {new.name} in a {opts.file_type.name} file, which needs an importance "
                                "matrix (--imatrix)")
        if t.type not in UNQUANTIZED and not allow_requantize:
            raise QuantizeError(f"tensor {t.name} is already quantized ({t.type.name}); requantizing loses quality, "
                                "pass --allow-requantize to do it anyway")
        row_bytes(new, t.shape[-1])  # the rules guarantee whole blocks; fail early if not

    n_elements = sum(t.n_elements for t in tensors)
    original = sum(t.nbytes for t in tensors)
    new_total = sum(int(np.prod(t.shape[:-1], dtype=np.int64)) * row_bytes(new, t.shape[-1]) for t, new in plan)
    summary = Summary(original, new_total, n_elements, 0.0, [], [(t.name, t.type, new) for t, new in plan], chooser.n_fallback)
    if dry_run:
        summary.seconds = time.perf_counter() - start
        return summary

    if nthreads > 0:
        set_num_threads(nthreads)
    writer = GGUFWriter(out, alignment=reader.alignment)
    writer.add_fields_from(reader.fields)
    writer.add_field("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32)
    if not opts.only_copy:
        writer.add_field("general.file_type", int(opts.file_type.ftype), GGUFValueType.UINT32)
    for o in list(overrides) + (_imatrix_overrides(imatrix) if opts.has_imatrix else []):
        writer.add_field(o.key, o.value, o.vtype)

    def compute(t, new):
        def make():
            if new == t.type:
                return t.raw
            src = t.raw.reshape(-1, t.raw.shape[-1])
            n = t.shape[-1]
            column_weights = weights.get(t.name)
            n_mat = t.shape[-2]  # rows per matrix; 3-D tensors hold one matrix per expert
            n_exp = len(src) // n_mat
            if column_weights is not None and column_weights.size != n * n_exp:
                if t.name != "token_embd.weight":
                    raise QuantizeError(f"imatrix for {t.name} has {column_weights.size} values, the tensor needs {n * n_exp}")
                column_weights = None
            parts = []
            for e in range(n_exp):
                rows = src[e * n_mat : (e + 1) * n_mat]
                w = column_weights[e * n : (e + 1) * n] if column_weights is not None else None
                if copies is not None:
                    parts.append(_quantize_on_device(copies.upload(rows), t.type, new, w))
                    continue
                f32 = rows.view(np.float32) if t.type == T.F32 else dequantize(rows, t.type)
                parts.append(quantize(f32, new, w))
            if copies is None:
                return np.concatenate(parts) if len(parts) > 1 else parts[0]
            return copies.download(torch.cat(parts) if len(parts) > 1 else parts[0])  # iterated by the writer's thread

        return make

    # On the GPU one worker thread uploads and quantizes the next tensors while the writer's thread downloads and
    # writes earlier results (kamado/quantize/device.py).
    copies = DeviceCopies(device) if device != "cpu" else None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kamado-quantize") if copies is not None else None
    makers = [compute(t, new) for t, new in plan]
    pending = {}

    def producer(i, name):
        def make():
            if progress:
                progress(i, len(plan), name)
            if pool is None:
                return makers[i]()
            for k in range(i, min(i + 1 + GPU_LOOKAHEAD, len(makers))):
                if k not in pending:
                    pending[k] = pool.submit(makers[k])
            return pending.pop(i).result()

        return make

    for i, (t, new) in enumerate(plan):
        writer.add_tensor(t.name, new, t.shape, producer(i, t.name))
    # --keep-split: the output shards hold the same tensors as the input's (tensors are in shard order).
    shard_counts = [sum(t.path == shard.path for t in tensors) for shard in reader.shards] if keep_split else None
    try:
        summary.outputs = writer.write(shard_tensor_counts=shard_counts)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            copies.close()
    summary.seconds = time.perf_counter() - start
    return summary
