"""One module per Hugging Face architecture family; REGISTRY maps each HF class name to its converter class."""

from kamado.convert.architectures.base import Architecture, Planned
from kamado.convert.architectures.bert import Bert
from kamado.convert.architectures.gemma2 import Gemma2
from kamado.convert.architectures.gemma3 import Gemma3
from kamado.convert.architectures.llama import Llama
from kamado.convert.architectures.phi3 import Phi3
from kamado.convert.architectures.qwen2 import Qwen2
from kamado.convert.architectures.qwen3 import Qwen3

REGISTRY: dict[str, type[Architecture]] = {
    name: cls for cls in (Llama, Gemma2, Gemma3, Phi3, Qwen2, Qwen3, Bert) for name in cls.hf_architectures
}

__all__ = ["REGISTRY", "Architecture", "Planned"]
