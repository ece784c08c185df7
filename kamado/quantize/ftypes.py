"""The file types `kamado quantize` offers, by llama-quantize's names, numbers and descriptions."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import LlamaFileType

from kamado.gguf.constants import GGMLQuantizationType as T


@dataclass(frozen=True)
class FileType:
    name: str  # as llama-quantize spells it
    ftype: LlamaFileType  # written to general.file_type
    default: T  # the tensor type most tensors get
    desc: str  # llama-quantize's description (size and ppl on Llama-3-8B)


F = LlamaFileType
# Order and text follow llama-quantize's --help. Types whose tensors kamado cannot quantize yet
# (IQ1/IQ2/IQ3, TQ, MXFP4) are not offered.
FILE_TYPES = [
    FileType("Q4_0", F.MOSTLY_Q4_0, T.Q4_0, " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    FileType("Q4_1", F.MOSTLY_Q4_1, T.Q4_1, " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    FileType("Q5_0", F.MOSTLY_Q5_0, T.Q5_0, " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    FileType("Q5_1", F.MOSTLY_Q5_1, T.Q5_1, " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    FileType("Q2_K", F.MOSTLY_Q2_K, T.Q2_K, " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    FileType("Q2_K_S", F.MOSTLY_Q2_K_S, T.Q2_K, " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    FileType("Q3_K", F.MOSTLY_Q3_K_M, T.Q3_K, "alias for Q3_K_M"),
    FileType("Q3_K_S", F.MOSTLY_Q3_K_S, T.Q3_K, " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    FileType("Q3_K_M", F.MOSTLY_Q3_K_M, T.Q3_K, " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    FileType("Q3_K_L", F.MOSTLY_Q3_K_L, T.Q3_K, " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    FileType("IQ4_NL", F.MOSTLY_IQ4_NL, T.IQ4_NL, " 4.50 bpw non-linear quantization"),
    FileType("IQ4_XS", F.MOSTLY_IQ4_XS, T.IQ4_XS, " 4.25 bpw non-linear quantization"),
    FileType("Q4_K", F.MOSTLY_Q4_K_M, T.Q4_K, "alias for Q4_K_M"),
    FileType("Q4_K_S", F.MOSTLY_Q4_K_S, T.Q4_K, " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    FileType("Q4_K_M", F.MOSTLY_Q4_K_M, T.Q4_K, " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    FileType("Q5_K", F.MOSTLY_Q5_K_M, T.Q5_K, "alias for Q5_K_M"),
    FileType("Q5_K_S", F.MOSTLY_Q5_K_S, T.Q5_K, " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    FileType("Q5_K_M", F.MOSTLY_Q5_K_M, T.Q5_K, " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    FileType("Q6_K", F.MOSTLY_Q6_K, T.Q6_K, " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    FileType("Q8_0", F.MOSTLY_Q8_0, T.Q8_0, " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    FileType("F16", F.MOSTLY_F16, T.F16, "14.00G, +0.0020 ppl @ Mistral-7B"),
    FileType("BF16", F.MOSTLY_BF16, T.BF16, "14.00G, -0.0050 ppl @ Mistral-7B"),
    FileType("F32", F.ALL_F32, T.F32, "26.00G              @ 7B"),
    FileType("COPY", F.ALL_F32, T.F32, "only copy tensors, no quantizing"),
]
_BY_NAME = {ft.name: ft for ft in FILE_TYPES}


def parse_file_type(text: str) -> FileType | None:
    """A file type by name (any case) or by its number, as llama-quantize accepts it; None if unknown."""
    ft = _BY_NAME.get(text.upper())
    if ft is not None:
        return ft
    if text.isdigit():
        # The first entry with that number wins, so 0 is F32 (not COPY) and 12 is the Q3_K alias of Q3_K_M.
        return next((ft for ft in FILE_TYPES if ft.ftype == int(text)), None)
    return None


def parse_tensor_type(text: str) -> T | None:
    """A ggml tensor type by name, any case (q8_0, Q6_K, f16 …)."""
    try:
        return T[text.upper()]
    except KeyError:
        return None
