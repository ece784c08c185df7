"""Hugging Face checkpoints -> GGUF, as llama.cpp's convert_hf_to_gguf.py writes them.

    from kamado.convert import convert
    paths = convert("path/to/hf_model", outfile="model.gguf", outtype="f16")

Layout: checkpoint.py reads config and weights lazily; architectures/ has one module per model family
(tensor names, metadata, weight transforms); vocab.py exports the tokenizer; metadata.py derives general.*;
converter.py plans the tensor types and streams the file through kamado.gguf.writer.

Known gaps against llama.cpp: a README.md model card (YAML front matter) is not read for general.* fields;
tokenizers without tokenizer.model whose tokenizer.json is SentencePiece-style (llama.cpp's LlamaHfVocab) are
exported as BPE; CodeLlama's FIM token ids are not added; quantized checkpoints (GPTQ, FP8, NVFP4) are not
dequantized.
"""

from kamado.convert.converter import convert, plan, supported_architectures, write
from kamado.convert.errors import ConvertError

__all__ = ["ConvertError", "convert", "plan", "supported_architectures", "write"]
