"""The seed workflow end to end, as seed 002 walks it for Phi-3.5 (convert to f16 -> llama-quantize Q4_K_M ->
llama-cli with a Phi-3 prompt), on the tiny Phi-3 reference checkpoint and through kamado's own commands."""

from __future__ import annotations

import json

import torch
from gguf import GGMLQuantizationType, LlamaFileType

import kamado
from kamado.cli.main import main as kamado_main
from kamado.gguf.reader import GGUFReader
from kamado.models import load_model, solo_attend
from tests.convert.reference_models import reference_dir

PROMPT = "<|user|>\\nCan you introduce .NET<|end|>\\n<|assistant|>\\n"  # as typed on the command line (escapes)
N_PREDICT = 8
FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def test_convert_quantize_run(shared, tmp_path, capsys):
    reference = reference_dir(shared)
    f16, q4 = tmp_path / "phi3-f16.gguf", tmp_path / "phi3-Q4_K_M.gguf"

    assert kamado_main(["convert", str(reference / "hf" / "phi3-spm"), "--outfile", str(f16), "--outtype", "f16"]) == 0
    assert kamado_main(["quantize", str(f16), str(q4), "Q4_K_M"]) == 0

    reader = GGUFReader(q4)
    assert reader.metadata["general.architecture"] == "phi3"
    assert reader.metadata["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_M
    matrices = [t for t in reader.tensors.values() if len(t.shape) == 2]
    assert matrices and all(t.type not in FLOAT_TYPES for t in matrices)  # every weight matrix went to a block format

    # The quantized model still computes what transformers computes for the original weights.
    model = load_model(reader, "reference")
    for record in json.loads((reference / "transformers-logits.json").read_text())["phi3-spm"]:
        ids = record["input_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor(ids), torch.arange(len(ids)), solo_attend(model.cfg.n_layer))
        similarity = torch.nn.functional.cosine_similarity(logits, torch.tensor(record["logits"]), dim=-1)
        assert similarity.min() > 0.99

    capsys.readouterr()
    assert kamado_main(["run", "-m", str(q4), "-p", PROMPT, "-n", str(N_PREDICT), "-no-cnv", "--temp", "0"]) == 0
    printed = capsys.readouterr().out

    # Completion mode echoes the prompt and continues it greedily: the Python API's answer for the same text.
    text = PROMPT.replace("\\n", "\n")
    answer = kamado.Llama(str(q4), verbose=False).create_completion(text, max_tokens=N_PREDICT, temperature=0)
    assert answer["usage"]["completion_tokens"] == N_PREDICT
    assert answer["choices"][0]["text"]
    assert printed.startswith(text + answer["choices"][0]["text"])
