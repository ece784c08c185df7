"""Model architectures as plain PyTorch modules, built from a GGUF file's metadata and tensors.

`load_model(reader, backend="cpu", n_ctx=0)` returns a DecoderModel; one short module per family
declares what sets its graph apart (kamado/models/<family>.py), the shared math is in blocks.py.
"""

from __future__ import annotations

from kamado.models import gemma2, gemma3, llama, phi3, qwen2, qwen3
from kamado.models.config import ModelConfig, ModelError
from kamado.models.decoder import ArchSpec, DecoderModel, LayerAttention, solo_attend

ARCHITECTURES: dict[str, ArchSpec] = {k: v for m in (llama, qwen2, qwen3, gemma2, gemma3, phi3) for k, v in m.ARCHS.items()}


def load_model(reader, backend: str = "cpu", n_ctx: int = 0, progress=None) -> DecoderModel:
    """Build the model a kamado.gguf GGUFReader describes; weights stay in the file's block formats."""
    meta = reader.metadata
    name = meta.get("general.architecture")
    supported = f"supported architectures: {', '.join(sorted(ARCHITECTURES))}"
    if name not in ARCHITECTURES:
        raise ModelError(f"{reader.path if hasattr(reader, 'path') else 'model'}: unknown architecture {name!r}; {supported}")
    embd = reader.tensors.get("token_embd.weight")
    if embd is None:
        raise ModelError(f"{name} model: tensor token_embd.weight is missing ({supported})")
    cfg = ModelConfig.from_metadata(meta, n_vocab=int(embd.shape[0]))
    cfg.extra["n_ctx"] = n_ctx
    return DecoderModel(cfg, ARCHITECTURES[name], reader.tensors, backend, supported, progress)


__all__ = ["ARCHITECTURES", "ArchSpec", "DecoderModel", "LayerAttention", "ModelConfig", "ModelError", "load_model", "solo_attend"]
