"""Which type each tensor gets: llama-quantize's rules (src/llama-quant.cpp), for the file types we offer.

The _S/_M/_L mixtures give some tensors more bits (attn_v, ffn_down in the "more bits" layers, the
output), rows whose length is not a multiple of a type's block size fall back to a compatible type,
and some tensors are never quantized (1-D tensors, norms, expert routers, positional embeddings).
The per-category counters advance in file order, exactly as llama.cpp's do, so the choice for the
n-th attn_v or ffn_down tensor matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, auto

from gguf import LlamaFileType as F

from kamado.gguf.constants import GGML_BLOCK_SIZES
from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quantize.ftypes import FileType

UNQUANTIZED = {T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64}

# Name fragments of tensors llama.cpp never quantizes (small, or lookup tables it needs exact).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
)
_NEVER_QUANTIZED_NAMES = {"position_embd.weight", "token_types.weight"}

# Where a k-quant (or IQ4_XS) does not fit the row length, llama.cpp falls back to a 32-block type.
_FALLBACK = {T.IQ4_XS: T.IQ4_NL, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


class Category(Enum):
    TOKEN_EMBD = auto()
    ATTENTION_Q = auto()
    ATTENTION_V = auto()
    ATTENTION_K = auto()
    ATTENTION_QKV = auto()
    ATTENTION_KV_B = auto()
    ATTENTION_OUTPUT = auto()
    FFN_UP = auto()
    FFN_GATE = auto()
    FFN_DOWN = auto()
    OUTPUT = auto()
    OTHER = auto()


_ATTN_V_LIKE = {Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B}
# First match wins, in llama.cpp's order.
_CATEGORY_FRAGMENTS = [
    ("attn_qkv.weight", Category.ATTENTION_QKV),
    ("attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("attn_v.weight", Category.ATTENTION_V),
    ("attn_k.weight", Category.ATTENTION_K),
    ("attn_q.weight", Category.ATTENTION_Q),
    ("attn_output.weight", Category.ATTENTION_OUTPUT),
    ("ffn_up", Category.FFN_UP),
    ("ffn_gate", Category.FFN_GATE),
    ("ffn_down", Category.FFN_DOWN),
]


def category_of(name: str) -> Category:
    if name == "output.weight":
        return Category.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return Category.TOKEN_EMBD
    return next((cat for frag, cat in _CATEGORY_FRAGMENTS if frag in name), Category.OTHER)


@dataclass
class Options:
    file_type: FileType
    pure: bool = False
    quantize_output: bool = True  # False with --leave-output-tensor
    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    tensor_types: list[tuple[re.Pattern, T]] = field(default_factory=list)  # --tensor-type PATTERN=TYPE, first match wins
    has_imatrix: bool = False

    @property
    def only_copy(self) -> bool:
        return self.file_type.name == "COPY"


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters llama.cpp's rules look at."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    @classmethod
    def from_metadata(cls, meta: dict) -> ModelShape:
        arch = meta.get("general.architecture", "")

        def first(key, default):
            v = meta.get(f"{arch}.{key}", default)
            return int(v[0]) if hasattr(v, "__len__") else int(v)  # per-layer arrays: llama.cpp uses layer 0

        return cls(arch, first("block_count", 0), first("attention.head_count", 1), first("attention.head_count_kv", 0) or
                   first("attention.head_count", 1), first("expert_count", 0))

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


def allows_quantization(name: str, n_dims: int, opts: Options) -> bool:
    if opts.only_copy or n_dims < 2 or not name.endswith("weight"):
        return False
    if not opts.quantize_output and name == "output.weight":
        return False
    return name not in _NEVER_QUANTIZED_NAMES and not any(frag in name for frag in _NEVER_QUANTIZED)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


class TypeChooser:
    """Call `choose` once per tensor, in file order (the mixture rules count tensors as they go)."""

    def __init__(self, model: ModelShape, names: list[str], opts: Options):
        self.model = model
        self.opts = opts
        self.n_attention_wv = sum(category_of(n) in _ATTN_V_LIKE for n in names)
        self.tied_embeddings = "output.weight" not in names
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.n_fallback = 0

    def choose(self, name: str, shape: tuple[int, ...], current: T) -> T:
        """The type `name` (numpy-order shape, current type) is written with."""
        opts = self.opts
        if not allows_quantization(name, len(shape), opts):
            return current
        cat = category_of(name)
        if opts.token_embedding_type is not None and cat == Category.TOKEN_EMBD:
            return opts.token_embedding_type
        if opts.output_tensor_type is not None and cat == Category.OUTPUT:
            return opts.output_tensor_type
        new = opts.file_type.default
        if new in UNQUANTIZED:
            return new
        manual = False
        for pattern, qtype in opts.tensor_types:
            if pattern.search(name):
                new, manual = qtype, True
                break
        if not manual and not opts.pure:
            new = self._mixture(name, shape, new, cat)
        return self._fallback(shape[-1], new)

    def _fallback(self, n_cols: int, qtype: T) -> T:
        if n_cols % GGML_BLOCK_SIZES[qtype][0] == 0:
            return qtype
        self.n_fallback += 1
        if qtype not in _FALLBACK:
            raise ValueError(f"no fallback type is defined for {qtype.name} with rows of {n_cols}")
        fallback = _FALLBACK[qtype]
        return fallback if n_cols % GGML_BLOCK_SIZES[fallback][0] == 0 else T.F16

    def _layer(self, counter: int, name: str) -> int:
        """The layer index of an ffn tensor: the running count, or (MoE) the number in its name."""
        if self.model.n_expert <= 1:
            return counter
        m = re.match(r"blk\.(\d+)\.", name)
        if not m or not 0 <= int(m[1]) < self.model.n_layer:
            raise ValueError(f"cannot determine the layer of tensor {name}")
        return int(m[1])

    def _mixture(self, name: str, shape: tuple[int, ...], new: T, cat: Category) -> T:
        ft = self.opts.file_type.ftype
        m = self.model
        arch_falcon = m.arch == "falcon"
        if cat == Category.OUTPUT or (self.tied_embeddings and cat == Category.TOKEN_EMBD):
            if self.opts.output_tensor_type is not None:
                return self.opts.output_tensor_type
            if arch_falcon or shape[-1] % GGML_BLOCK_SIZES[new][0]:
                return T.Q8_0
            return new if new == T.Q8_0 else T.Q6_K
        if cat == Category.TOKEN_EMBD:
            return self.opts.token_embedding_type or new
        if cat in _ATTN_V_LIKE:
            if ft == F.MOSTLY_Q2_K:
                new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
            elif ft == F.MOSTLY_Q2_K_S and m.n_gqa >= 4:
                new = T.Q4_K
            elif ft == F.MOSTLY_Q3_K_M:
                new = T.Q5_K if self.i_attention_wv < 2 else T.Q4_K
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q5_K
            elif ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and m.n_gqa >= 4:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(self.i_attention_wv, self.n_attention_wv):
                new = T.Q6_K
            elif ft == F.MOSTLY_Q4_K_S and self.i_attention_wv < 4:
                new = T.Q5_K
            if m.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            if m.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
        elif cat == Category.ATTENTION_K:
            if m.n_expert == 8:
                new = T.Q8_0
        elif cat == Category.FFN_DOWN:
            i_layer, n_layer = self._layer(self.i_ffn_down, name), m.n_layer
            if ft == F.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == F.MOSTLY_Q2_K_S:
                if i_layer < n_layer // 8:
                    new = T.Q4_K
            elif ft == F.MOSTLY_Q3_K_M:
                new = (T.Q5_K if i_layer < n_layer // 16
                       else T.Q4_K if not arch_falcon or _use_more_bits(i_layer, n_layer) else T.Q3_K)
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q4_K if arch_falcon else T.Q5_K
            elif ft == F.MOSTLY_Q4_K_M:
                if arch_falcon:
                    new = T.Q6_K if i_layer < n_layer // 16 else T.Q5_K if _use_more_bits(i_layer, n_layer) else T.Q4_K
                elif _use_more_bits(i_layer, n_layer):
                    new = T.Q6_K
            elif i_layer < n_layer // 8 and ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not self.opts.has_imatrix:
                new = T.Q5_K
            elif ft == F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
                new = T.Q6_K
            elif ft == F.MOSTLY_Q4_K_S and not arch_falcon and i_layer < n_layer // 8:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and self.opts.has_imatrix and i_layer < n_layer // 8:
                # llama.cpp guards the first ffn_down layers, which go wrong even with an imatrix for Q4_0/Q5_0.
                new = T.Q4_1 if ft == F.MOSTLY_Q4_0 else T.Q5_1
            self.i_ffn_down += 1
        elif cat == Category.ATTENTION_OUTPUT:
            if not arch_falcon:
                if m.n_expert == 8:
                    if ft in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S,
                              F.MOSTLY_Q4_K_M, F.MOSTLY_IQ4_XS):
                        new = T.Q5_K
                elif ft == F.MOSTLY_Q2_K:
                    new = T.Q3_K
                elif ft == F.MOSTLY_Q3_K_M:
                    new = T.Q4_K
                elif ft == F.MOSTLY_Q3_K_L:
                    new = T.Q5_K
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q4_K
        elif cat == Category.ATTENTION_QKV:
            if ft in (F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L):
                new = T.Q4_K
            elif ft == F.MOSTLY_Q4_K_M:
                new = T.Q5_K
            elif ft == F.MOSTLY_Q5_K_M:
                new = T.Q6_K
        elif cat == Category.FFN_GATE:
            self.i_ffn_gate += 1
        elif cat == Category.FFN_UP:
            self.i_ffn_up += 1
        return new


def requires_imatrix(name: str, qtype: T, file_type: FileType) -> bool:
    """Q2_K tensors of a Q2_K_S file are garbage without an imatrix; llama.cpp refuses to write them."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    return qtype == T.Q2_K and file_type.ftype == F.MOSTLY_Q2_K_S
