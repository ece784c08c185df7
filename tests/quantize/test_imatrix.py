"""`kamado imatrix`: llama-imatrix's statistics, files and command line."""

import numpy as np
import pytest
import torch

from kamado.cli.imatrix import main as imatrix_main
from kamado.gguf import GGUFReader
from kamado.quantize.imatrix import Collector, attach, compute_imatrix, write_dat, write_gguf
from kamado.quants import load_imatrix
from tests.models.tiny import tiny_model


class Spy:
    """Keeps every input a linear layer receives (and looks like that layer to attach())."""

    def __init__(self, linear):
        self.linear, self.tensor, self.seen = linear, linear.tensor, []

    def __call__(self, x):
        self.seen.append(x.clone())
        return self.linear(x)


def test_collector_sums_squares_of_each_linear_input():
    model = tiny_model("qwen2", backend="reference")
    spy = model.layers[1].down = Spy(model.layers[1].down)
    result = compute_imatrix(model, list(range(1, 33)), n_ctx=16, bos_id=1)
    e = result.collector.entries["blk.1.ffn_down.weight"]
    assert result.chunk_count == 2 and e.counts.tolist() == [32]
    seen = torch.cat(spy.seen).numpy()
    acc = np.zeros(seen.shape[1], np.float32)
    for row in seen:  # llama-imatrix's loop: float32, row after row
        acc = acc + row * row
    np.testing.assert_array_equal(e.values[0], acc)
    assert sorted(result.collector.entries) == sorted(f"blk.{i}.{n}.weight" for i in range(2) for n in
                                                     ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
    assert attach(tiny_model("qwen2", backend="reference"), Collector()) == 14  # token_embd / output are not blk.*


def test_chunks_run_side_by_side_in_ubatches_as_llama_imatrix_runs_them():
    """-c 1024: two chunks per batch of 2048, ubatches of 512 rows = 256 of each chunk, four of them; the perplexity
    is the same as chunk by chunk."""
    from kamado.engine import perplexity

    model = tiny_model("qwen2", backend="reference")
    spy = model.layers[0].o = Spy(model.layers[0].o)
    tokens = [1 + (7 * i) % 95 for i in range(2048)]
    result = compute_imatrix(model, tokens, n_ctx=1024, bos_id=1)
    assert [len(x) for x in spy.seen] == [512] * 4
    ppl, _ = perplexity(tiny_model("qwen2", backend="reference"), tokens, 1024, 1)
    assert result.chunk_count == 2 and result.ppl == pytest.approx(ppl, rel=1e-5)


def test_files_round_trip_through_the_quantizer_reader(tmp_path):
    model = tiny_model("qwen2", backend="reference")
    result = compute_imatrix(model, list(range(2, 50)), n_ctx=16, bos_id=1)
    write_gguf(result, tmp_path / "m.gguf", ["data.txt"])
    write_dat(result, tmp_path / "m.dat", "data.txt")
    g, d = load_imatrix(tmp_path / "m.gguf"), load_imatrix(tmp_path / "m.dat")
    assert g.datasets == d.datasets == ["data.txt"] and g.chunk_count == d.chunk_count == 3
    for name, e in result.collector.entries.items():
        want = (e.values[0] / e.counts[0]).astype(np.float32)
        np.testing.assert_allclose(g.weights[name], want, rtol=1e-6)
        np.testing.assert_allclose(d.weights[name], want, rtol=1e-6)
    r = GGUFReader(tmp_path / "m.gguf")
    assert r.get("general.type") == "imatrix" and r.get("imatrix.chunk_size") == 16


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        imatrix_main(["-m", str(tmp_path / "none.gguf"), "-f", str(tmp_path / "t.txt")])
    assert e.value.code == 1 and "model file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gemma_imatrix(shared, gemma_path, tmp_path_factory):
    """kamado's and llama-imatrix's imatrix files for seed 001 on Gemma 3 270M (-c 256)."""
    out = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    torch.manual_seed(0)
    assert imatrix_main(["-m", str(gemma_path), "-f", str(shared / "seeds" / "001_3eca53226205c1ab.txt"), "-c", "256", "-o", str(out)]) == 0
    return GGUFReader(out), GGUFReader(shared / "reference" / "imatrix-seed001.gguf")


@pytest.mark.slow
@pytest.mark.realmodel
def test_gemma_imatrix_has_llama_imatrix_entries(gemma_imatrix):
    ours, ref = gemma_imatrix
    assert list(ours.tensors) == list(ref.tensors)
    assert all(ours.tensors[name].shape == t.shape for name, t in ref.tensors.items())


@pytest.mark.slow
@pytest.mark.realmodel
def test_gemma_imatrix_values_match_llama_imatrix(gemma_imatrix):
    ours, ref = gemma_imatrix
    for name, t in ref.tensors.items():
        np.testing.assert_allclose(np.asarray(ours.tensors[name].raw).view("<f4"), np.asarray(t.raw).view("<f4"), rtol=1e-3, err_msg=name)


@pytest.mark.slow
@pytest.mark.realmodel
def test_gemma_imatrix_values_are_bit_exact(gemma_imatrix):
    """The "ggml" kernels' float order (docs/NUMERICS.md) and llama-imatrix's batching and float32 sums: every byte."""
    ours, ref = gemma_imatrix
    differ = [name for name, t in ref.tensors.items() if bytes(ours.tensors[name].raw) != bytes(t.raw)]
    assert not differ, f"{len(differ)} tensors differ, first {differ[0]}"
