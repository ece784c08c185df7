"""llama.cpp-identical tokenizers built from GGUF metadata: SPM (llama), BPE (gpt2, every llama.cpp pre-tokenizer
that is regex based), WPM (bert). Entry point: `Tokenizer.from_gguf(path_or_reader)`."""

from kamado.tokenizer.tokenizer import StreamDecoder, Tokenizer
from kamado.tokenizer.vocab import TokenizerError

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerError"]
