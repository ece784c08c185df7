"""Model architectures as plain PyTorch modules, built from a GGUF file's metadata and tensors.

`load_model(reader, backend="cpu", n_ctx=0)` returns a DecoderModel; one short module per family
declares what sets its graph apart (kamado/models/<family>.py), the shared math is in blocks.py.
Encoders (BERT, kamado/models/bert.py) come back as their own module, which embeds but does not generate
(`is_encoder(model)`).
"""

from __future__ import annotations

from kamado.kernels.hugepages import huge_pages_for_new_memory
from kamado.kernels.openmp import release_thread_pool
from kamado.models import gemma2, gemma3, llama, phi3, qwen2, qwen3
from kamado.models.bert import BertModel
from kamado.models.config import ModelConfig, ModelError
from kamado.models.decoder import ArchSpec, DecoderModel, LayerAttention, Offload, solo_attend
from kamado.models.placement import offload_for

ARCHITECTURES: dict[str, ArchSpec] = {k: v for m in (llama, qwen2, qwen3, gemma2, gemma3, phi3) for k, v in m.ARCHS.items()}
ENCODERS = {"bert": BertModel}


def is_encoder(model) -> bool:
    """An encoder's hidden states come from `model.encode(tokens)`; it has no logits and cannot generate."""
    return isinstance(model, tuple(ENCODERS.values()))


def load_model(reader, backend: str = "cpu", n_ctx: int = 0, progress=None, n_gpu_layers: int = 0) -> DecoderModel | BertModel:
    """Build the model a kamado.gguf GGUFReader describes; weights stay in the file's block formats.

    backend: kernel backend of kamado.kernels ("reference" also computes activations and attention in exact
    float32, see exact.py). n_ctx: the context each sequence gets (0: the model's training context); Phi-3's
    longrope picks its long or short factors from it, as llama.cpp does. n_gpu_layers: llama.cpp's -ngl
    (kamado.models.placement: -1 = all, N = the first N layers on the GPU; ignored with a note without CUDA;
    encoders always run on the CPU).
    """
    meta = reader.metadata
    source = getattr(reader, "path", "model")
    name = meta.get("general.architecture")
    supported = f"supported architectures: {', '.join(sorted([*ARCHITECTURES, *ENCODERS]))}"
    if name is None:
        raise ModelError(f"{source}: metadata key general.architecture is missing; {supported}")
    if name not in ARCHITECTURES and name not in ENCODERS:
        raise ModelError(f"{source}: unknown architecture {name!r}; {supported}")
    try:
        embd = reader.tensors.get("token_embd.weight")
        if embd is None:
            raise ModelError(f"{name} model: tensor token_embd.weight is missing ({supported})")
        cfg = ModelConfig.from_metadata(meta, n_vocab=int(embd.shape[0]))
        cfg.extra["n_ctx"] = n_ctx or cfg.n_ctx_train
        with huge_pages_for_new_memory():  # the repacked weights (kamado/kernels/hugepages.py)
            if name in ENCODERS:
                model = ENCODERS[name](cfg, reader.tensors, backend, supported, progress)
            else:
                offload = offload_for(n_gpu_layers, cfg.n_layer)
                model = DecoderModel(cfg, ARCHITECTURES[name], reader.tensors, backend, supported, progress, offload)
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from None
    reader.release_pages()  # the kernels hold the weights they compute with; later reads fault their pages back in
    release_thread_pool()  # the engine's thread computes from now on (kamado/kernels/openmp.py)
    return model


__all__ = ["ARCHITECTURES", "ENCODERS", "ArchSpec", "BertModel", "DecoderModel", "LayerAttention", "ModelConfig", "ModelError",
           "Offload", "is_encoder", "load_model", "solo_attend"]
