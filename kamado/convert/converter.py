"""Planning and writing a conversion: which tensors, in which GGUF type, with which metadata, into which file.

`plan()` reads only config files and tensor headers; tensor data is read, transformed and quantized one
tensor at a time while the GGUF writer streams the file, so memory stays near the largest single tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kamado.convert.architectures import REGISTRY, Architecture, Planned
from kamado.convert.checkpoint import SourceTensor, list_tensors, read_json
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import Metadata, add_general, default_file_name, naming_for, size_label
from kamado.gguf.constants import GGML_BLOCK_SIZES, GGMLQuantizationType
from kamado.quants import quantize

Q = GGMLQuantizationType
# --outtype -> (tensor type for weight matrices, general.file_type, the name's encoding part)
OUTTYPES: dict[str, tuple[GGMLQuantizationType, int, str]] = {
    "f32": (Q.F32, 0, "F32"), "f16": (Q.F16, 1, "F16"), "bf16": (Q.BF16, 32, "BF16"), "q8_0": (Q.Q8_0, 7, "Q8_0"),
}
DEFAULT_OUTTYPE = "f16"  # convert_hf_to_gguf.py's default
GGML_QUANT_VERSION = 2


@dataclass(frozen=True)
class TensorPlan:
    """A GGUF tensor to write: name, type, numpy-order shape, and a function producing its raw bytes."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]


@dataclass
class ConversionPlan:
    architecture: str
    outtype: str
    outfile: Path
    metadata: Metadata
    tensors: list[TensorPlan] = field(default_factory=list)


def supported_architectures() -> list[str]:
    return sorted(REGISTRY)


def load_architecture(model_dir: Path) -> Architecture:
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    config = read_json(model_dir / "config.json")
    names = config.get("architectures") or []
    hf_arch = names[0] if isinstance(names, list) and names else None
    if hf_arch not in REGISTRY:
        raise ConvertError(f"{model_dir / 'config.json'}: architecture {hf_arch!r} is not supported; "
                           f"supported: {', '.join(supported_architectures())}")
    return REGISTRY[hf_arch](model_dir, config)


def guess_outtype(sources: list[SourceTensor]) -> str:
    """--outtype auto: the dtype of the first matrix, as llama.cpp guesses it (f16 when nothing tells)."""
    for source in sources:
        if len(source.shape) >= 2 and source.dtype in (torch.bfloat16, torch.float16):
            return "bf16" if source.dtype == torch.bfloat16 else "f16"
    return "f16"


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    # llama.cpp's converter keeps f16 and f32 as they are and widens everything else (bf16, f64, ...) to f32.
    return tensor if tensor.dtype in (torch.float16, torch.float32) else tensor.to(torch.float32)


# Tables llama.cpp's converter always keeps in float32 (BERT's learned positions and token types).
ALWAYS_F32 = ("position_embd.weight", "token_types.weight")


def tensor_type(name: str, shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """llama.cpp's rule: norms, 1-D tensors, biases, MoE routers and ALWAYS_F32 stay F32; rows that do not fill whole
    blocks fall back to F16."""
    if (len(shape) <= 1 or name.endswith("_norm.weight") or ".ffn_gate_inp." in name or not name.endswith(".weight")
            or name in ALWAYS_F32):
        return Q.F32
    if shape[-1] % GGML_BLOCK_SIZES[wanted][0]:
        return Q.F16
    return wanted


def _producer(planned: Planned, qtype: GGMLQuantizationType) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        data = planned.compute(*(_as_float(source.load()) for source in planned.inputs)).numpy()
        if qtype == Q.F32:
            return np.ascontiguousarray(data, dtype=np.float32).view(np.uint8)
        return quantize(data, qtype)

    return produce


def plan_tensors(arch: Architecture, sources: list[SourceTensor], wanted: GGMLQuantizationType, md: Metadata) -> list[TensorPlan]:
    plans = []
    for planned in arch.plan_all(sources, md):
        shape = tuple(planned.compute(*(_as_float(s.meta()) for s in planned.inputs)).shape)
        qtype = tensor_type(planned.name, shape, wanted)
        plans.append(TensorPlan(planned.name, qtype, shape, _producer(planned, qtype)))
    leftovers = getattr(arch, "_experts", {})
    if any(leftovers.values()):
        raise ConvertError(f"{arch.model_dir}: incomplete expert tensors: {sorted(n for layer in leftovers.values() for n in layer)[:5]}")
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise ConvertError(f"{arch.model_dir}: two checkpoint tensors map to the same GGUF tensor")
    return plans


def plan(model_dir: str | Path, outfile: str | Path | None = None, outtype: str = DEFAULT_OUTTYPE,
         vocab_only: bool = False) -> ConversionPlan:
    """Everything about a conversion except the tensor data: metadata, tensor list and output path."""
    model_dir = Path(model_dir)
    arch = load_architecture(model_dir)
    sources = list_tensors(model_dir)
    if outtype == "auto":
        outtype = guess_outtype(sources)
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r}; choose from {', '.join([*OUTTYPES, 'auto'])}")
    wanted, file_type, encoding = OUTTYPES[outtype]

    # Metadata goes in the order llama.cpp's writer collects it: architecture first, then what planning the
    # tensors adds (Phi-3's rope attn_factor), general.*, hyperparameters, quantization version, tokenizer.
    md = Metadata()
    md.string("general.architecture", arch.gguf_arch)
    tensors = [] if vocab_only else plan_tensors(arch, sources, wanted, md)
    naming = naming_for(model_dir, arch.config, sum(int(np.prod(t.shape)) for t in tensors))
    if naming.size_label is None:
        naming.size_label = size_label({t.name: t.shape for t in tensors})
    md.string("general.type", "model")
    add_general(md, model_dir, naming)
    arch.add_parameters(md, file_type)
    md.u32("general.quantization_version", GGML_QUANT_VERSION)
    arch.add_vocab(md)

    out = Path(outfile) if outfile is not None else model_dir
    if out.is_dir():
        out = out / default_file_name(naming, encoding, vocab_only)
    else:  # a templated name such as model-{ftype}.gguf
        out = out.parent / _fill_template(out.name, encoding)
    return ConversionPlan(arch.gguf_arch, outtype, out, md, tensors)


def _fill_template(name: str, encoding: str) -> str:
    try:
        return name.format(encoding.lower(), outtype=encoding.lower(), ftype=encoding.lower(), OUTTYPE=encoding, FTYPE=encoding)
    except (IndexError, KeyError, ValueError):
        raise ConvertError(f"--outfile {name!r}: bad template (use {{ftype}} or {{outtype}})") from None


def write(conversion: ConversionPlan, split_max_size: int | None = None, split_max_tensors: int | None = None,
          progress: bool = False) -> list[Path]:
    """Stream the planned GGUF to disk (temporary name, then renamed); returns the written file(s)."""
    from kamado.gguf.writer import GGUFWriter

    writer = GGUFWriter(conversion.outfile)
    for key, f in conversion.metadata.fields.items():
        writer.add_field(key, f.value, f.vtype, f.item_type)
    bar = None
    if progress and conversion.tensors:
        from tqdm import tqdm

        bar = tqdm(total=len(conversion.tensors), unit="tensor", desc=f"writing {conversion.outfile.name}")
    for tensor in conversion.tensors:
        writer.add_tensor(tensor.name, tensor.qtype, tensor.shape, _ticking(tensor.produce, bar) if bar else tensor.produce)
    try:
        return writer.write(split_max_size=split_max_size, split_max_tensors=split_max_tensors)
    finally:
        if bar:
            bar.close()


def _ticking(produce: Callable[[], np.ndarray], bar) -> Callable[[], np.ndarray]:
    def produce_and_tick() -> np.ndarray:
        data = produce()
        bar.update(1)
        return data

    return produce_and_tick


def convert(model_dir: str | Path, outfile: str | Path | None = None, outtype: str = DEFAULT_OUTTYPE, vocab_only: bool = False,
            split_max_size: int | None = None, split_max_tensors: int | None = None, progress: bool = False) -> list[Path]:
    """Convert a Hugging Face checkpoint folder to GGUF as convert_hf_to_gguf.py does; returns the written path(s)."""
    return write(plan(model_dir, outfile, outtype, vocab_only), split_max_size, split_max_tensors, progress)
