"""GGUF key-value metadata in writing order, and the general.* fields llama.cpp derives for a checkpoint.

The general.* heuristics follow gguf-py's Metadata.load: the model name comes from config.json's
`_name_or_path` or the folder name, split into basename / size label / finetune / version; sampling
defaults come from generation_config.json. (A README.md model card is not read; see the package docstring.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamado.convert.checkpoint import read_optional_json
from kamado.gguf.constants import GGUFValueType

U32, I32, F32, BOOL, STR, ARR = (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.FLOAT32,
                                 GGUFValueType.BOOL, GGUFValueType.STRING, GGUFValueType.ARRAY)


@dataclass
class Field:
    value: Any
    vtype: GGUFValueType
    item_type: GGUFValueType | None = None


class Metadata:
    """Ordered GGUF fields. Setting a key again replaces its value but keeps its place, as gguf-py's writer does."""

    def __init__(self):
        self.fields: dict[str, Field] = {}

    def set(self, key: str, value: Any, vtype: GGUFValueType, item_type: GGUFValueType | None = None) -> None:
        self.fields[key] = Field(value, vtype, item_type)

    def u32(self, key: str, value: int) -> None:
        self.set(key, int(value), U32)

    def f32(self, key: str, value: float) -> None:
        self.set(key, float(value), F32)

    def string(self, key: str, value: str) -> None:
        self.set(key, value, STR)

    def boolean(self, key: str, value: bool) -> None:
        self.set(key, bool(value), BOOL)

    def array(self, key: str, values: list, item_type: GGUFValueType) -> None:
        self.set(key, values, ARR, item_type)

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        return default if field is None else field.value


@dataclass
class ModelNaming:
    name: str
    basename: str | None = None
    finetune: str | None = None
    version: str | None = None
    organization: str | None = None
    size_label: str | None = None


_SAMPLING_KEYS = (  # generation_config.json key, GGUF key, type; in gguf-py's writing order
    ("sequence", "general.sampling.sequence", STR), ("top_k", "general.sampling.top_k", I32),
    ("top_p", "general.sampling.top_p", F32), ("min_p", "general.sampling.min_p", F32),
    ("xtc_probability", "general.sampling.xtc_probability", F32), ("xtc_threshold", "general.sampling.xtc_threshold", F32),
    ("temperature", "general.sampling.temp", F32), ("penalty_last_n", "general.sampling.penalty_last_n", I32),
    ("penalty_repeat", "general.sampling.penalty_repeat", F32), ("mirostat", "general.sampling.mirostat", I32),
    ("mirostat_tau", "general.sampling.mirostat_tau", F32), ("mirostat_eta", "general.sampling.mirostat_eta", F32),
)


def id_to_title(text: str) -> str:
    """'llama-spm' -> 'Llama Spm'; acronyms and version numbers keep their case."""
    words = text.strip().replace("-", " ").split()
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w for w in words)


def model_id_components(model_id: str, total_params: int) -> tuple[str, str | None, str | None, str | None, str | None, str | None]:
    """Split 'org/Name-7B-Instruct-v0.2' into (full name, org, basename, finetune, version, size label) like gguf-py."""
    if " " in model_id:
        return model_id, None, None, None, None, None
    org, full_name = model_id.split("/", 1) if "/" in model_id else (None, model_id)
    if org is not None and org.startswith("."):
        org = None
    parts = [p for p in full_name.split("-") if p]
    kinds: list[set[str]] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if re.fullmatch(r"(v|iter)?\d+([.]\d+)*", part, re.IGNORECASE):
            kinds[i].add("version")
        elif re.fullmatch(r"i?q\d(_\w)*|b?fp?(16|32)", part, re.IGNORECASE):
            kinds[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and re.fullmatch(r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)", part, re.IGNORECASE):
            part = part.replace("_", ".")
            if part[-1].isdecimal():  # bloom-7b1 notation
                part = part[:-2] + "." + part[-1] + part[-2]
            if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
                part = part[:-1] + part[-1].upper()
            if total_params != 0:
                try:
                    label_params = float(part[:-1]) * pow(1000, " KMBT".find(part[-1]))
                    far_off = (total_params < 0 and label_params < abs(total_params) // 8) or (
                        total_params > 0 and abs(label_params - total_params) > 7 * total_params // 8)
                    if far_off:  # most likely a context length, not a size
                        kinds[i].add("finetune")
                        part = part[:-1] + part[-1].lower()
                except ValueError:
                    pass
            if not kinds[i]:
                kinds[i].add("size_label")
            parts[i] = part
        elif i > 0 and re.fullmatch(r"chat|instruct|vision|lora", part, re.IGNORECASE):
            kinds[i].add("finetune")
    if any(c.isdecimal() for p, k in zip(parts, kinds, strict=True) if "size_label" in k for c in p):
        for p, k in zip(parts, kinds, strict=True):
            if "size_label" in k and all(c.isalpha() for c in p):
                k.remove("size_label")
    at_start = True
    for p, k in zip(parts, kinds, strict=True):
        if at_start and ((not k and p[0].isalpha()) or "version" in k):
            k.add("basename")
        else:
            at_start = False
            if not k:
                k.add("finetune")
    for k in reversed(kinds):
        if "basename" in k and len(k) > 1:
            k.remove("basename")
        else:
            break
    basename = "-".join(p for p, k in zip(parts, kinds, strict=True) if "basename" in k) or None
    size_label = "-".join(dict.fromkeys(p for p, k in zip(parts, kinds, strict=True) if "size_label" in k)) or None
    finetune = "-".join(p for p, k in zip(parts, kinds, strict=True) if "finetune" in k) or None
    version = "-".join(p for p, k in zip(parts, kinds, strict=True) if "version" in k and "basename" not in k) or None
    if size_label is None and finetune is None and version is None:
        basename = None
    return full_name, org, basename, finetune, version, size_label


def naming_for(model_dir: Path, config: dict, total_params: int) -> ModelNaming:
    naming = ModelNaming(name="")
    ids = []
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.count("/") <= 1:
        ids.append(name_or_path)
    ids.append(model_dir.resolve().name)
    for model_id in ids:
        full, org, basename, finetune, version, size_label = model_id_components(model_id, total_params)
        naming.name = naming.name or id_to_title(full)
        naming.organization = naming.organization or (id_to_title(org) if org else None)
        naming.basename = naming.basename or basename
        naming.finetune = naming.finetune or finetune
        naming.version = naming.version or version
        naming.size_label = naming.size_label or size_label
    return naming


def weight_count_notation(count: int, min_digits: int = 2) -> str:
    scale, suffix = next(((s, x) for limit, s, x in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M")) if count > limit), (1e-3, "K"))
    scaled = count * scale
    fix = max(min_digits - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def size_label(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """llama.cpp's size class from the written tensors' shapes (numpy order): '202K', or '4x203K' for MoE."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in shapes.items():
        size = 1
        for n in shape:
            size *= n
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    if total == 0:
        return None
    if n_expert_tensors:
        return f"{expert_sum // n_expert_tensors}x{weight_count_notation(shared + expert)}"
    return weight_count_notation(total)


def add_general(md: Metadata, model_dir: Path, naming: ModelNaming) -> None:
    """general.sampling.*, name, version, organization, finetune, basename, size_label in gguf-py's order."""
    generation = read_optional_json(model_dir / "generation_config.json") or {}
    for source_key, key, vtype in _SAMPLING_KEYS:
        if generation.get(source_key) is not None:
            md.set(key, generation[source_key], vtype)
    md.string("general.name", naming.name)
    for key, value in (("general.version", naming.version), ("general.organization", naming.organization),
                       ("general.finetune", naming.finetune), ("general.basename", naming.basename),
                       ("general.size_label", naming.size_label)):
        if value is not None:
            md.string(key, value)


def default_file_name(naming: ModelNaming, output_type: str | None, vocab_only: bool = False) -> str:
    """gguf-py's naming convention: Name-SIZE-Finetune-Version-TYPE.gguf (Name-vocab.gguf for --vocab-only)."""
    name = (naming.basename or naming.name or "ggml-model").strip().replace(" ", "-").replace("/", "-")
    pieces = [name]
    if naming.size_label and not vocab_only:
        pieces.append(naming.size_label)
    pieces += [p.strip().replace(" ", "-") for p in (naming.finetune, naming.version) if p]
    if output_type and not vocab_only:
        pieces.append(output_type.upper())
    if vocab_only:
        pieces.append("vocab")
    return "-".join(pieces) + ".gguf"
