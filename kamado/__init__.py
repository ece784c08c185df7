"""kamado: a Python-native local LLM toolkit (GGUF models, quantization, chat, OpenAI-compatible server)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import kamado` stays light; torch and the model code load on first use of kamado.Llama.
    if name == "Llama":
        from kamado.llama import Llama

        return Llama
    raise AttributeError(f"module 'kamado' has no attribute {name!r}")
