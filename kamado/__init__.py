"""kamado: a Python-native local LLM toolkit (GGUF models, quantization, chat, OpenAI-compatible server)."""

__version__ = "0.1.0"
