"""The GPU path (n_gpu_layers) against the CPU reference backend, on synthetic models written by kamado.synthetic.

GPU tests are marked gpu and skip without CUDA + Triton; the placement logic also runs on the CPU (device "cpu"
forced through the same Offload code) and the no-GPU fallback is checked everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kamado.engine import Engine, Request, SamplingParams
from kamado.engine.cuda_graph import DecodeGraphs, paged_attention
from kamado.gguf import GGUFReader
from kamado.kernels import triton
from kamado.models import DecoderModel, Offload, load_model
from kamado.models.blocks import attention
from kamado.models.placement import offload_for
from kamado.synthetic import PRESETS, write_synthetic

N_GEN = 8
LOGPROB_TOLERANCE = 0.02
needs_gpu = pytest.mark.skipif(not triton.available(), reason="needs a CUDA device and Triton")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def rounds_like_the_gpu(monkeypatch):
    """The CPU reference backend rounding activations where the GPU's products do: the CUDA GEMV of Q4_K/Q6_K layer
    weights (decode, M <= q8k_gemv.MAX_M; not the output head) multiplies q8k_gemv.rounded(x) (one plane: the Q8_K
    rounding of the default CPU backend and llama.cpp, which flips steps on the tiny random models past 0.02; two: ~15
    bits of x; docs/GPU.md session 7)."""
    from kamado.kernels.linear import ReferenceLinear
    from kamado.kernels.triton import q8k_gemv

    def round_input(self, x):
        head = self.tensor.name in ("output.weight", "token_embd.weight")
        rounded = not head and x.shape[0] <= q8k_gemv.MAX_M and q8k_gemv.supports(self.tensor.qtype, self.in_features)
        return q8k_gemv.rounded(x) if rounded and q8k_gemv.available() else x

    monkeypatch.setattr(ReferenceLinear, "round_input", round_input)


def _model_file(directory, file_type: str):
    path = directory / f"tiny-{file_type}.gguf"
    if not path.exists():
        write_synthetic(path, "tiny-llama", file_type, device="cuda" if torch.cuda.is_available() else "cpu", pure=True)
    return path


def _run(model, prompt: list[int]) -> list[tuple[int, dict[int, float]]]:
    """Greedy continuation with each step's top-5 logprobs: [(token, {id: logprob})]."""
    engine = Engine(model, n_ctx=128, n_seq_max=2)
    try:
        events = engine.generate(Request(prompt, SamplingParams(temperature=0.0, n_probs=5), max_tokens=N_GEN, ignore_eos=True))
    finally:
        engine.close()
    assert events[-1].error is None, events[-1].error
    return [(e.token, dict(e.top)) for e in events[:-1]]


def _assert_same(got, want):
    """Top-5 logprobs agree step by step; greedy tokens agree until a near-tie (top two within the tolerance in the
    reference), after which the continuations may legitimately part (random weights give such ties now and then)."""
    assert len(got) == len(want)
    for step, ((gt, g), (wt, w)) in enumerate(zip(got, want, strict=True)):
        if gt != wt:
            assert gt in w and w[wt] - w[gt] <= LOGPROB_TOLERANCE, f"step {step}: greedy {gt} vs {wt} without a near-tie ({w})"
        for token, logprob in w.items():
            if token in g:
                assert abs(g[token] - logprob) <= LOGPROB_TOLERANCE, f"step {step}, token {token}: {g[token]} vs {logprob}"
            else:  # a near-tie at the 5th place may swap in another token; it must then be the weakest
                assert logprob <= min(g.values()) + LOGPROB_TOLERANCE, f"step {step}: token {token} missing from the top 5"
        if gt != wt:
            return


def _prompt(seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(259, PRESETS["tiny-llama"].n_vocab, 11).tolist()


def test_offload_resolution_without_gpu(capsys, monkeypatch):
    monkeypatch.setattr(triton, "available", lambda: False)
    assert offload_for(0, 32) == Offload()
    assert offload_for(-1, 32) == Offload()
    assert "n_gpu_layers=-1 ignored" in capsys.readouterr().err


def test_offload_resolution_with_gpu(monkeypatch):
    monkeypatch.setattr(triton, "available", lambda: True)
    assert offload_for(-1, 32).n_layers == 32
    assert offload_for(99, 32).n_layers == 32
    assert offload_for(5, 32).n_layers == 5
    assert offload_for(0, 32).n_layers == 0


def test_hybrid_placement_on_cpu(synthetic_dir):
    """The placement code (layer devices, output device, per-layer backends) with the device forced to the CPU."""
    path = _model_file(synthetic_dir, "Q8_0")
    with GGUFReader(path) as reader:
        base = load_model(reader, "reference")
        cfg = base.cfg
        split = DecoderModel(cfg, base.arch, reader.tensors, "cpu", "test", offload=Offload(1, "cpu", "reference"))
        prompt = _prompt()
        assert [type(lin).__name__ for lin in (split.layers[0].o, split.layers[1].o)] == ["ReferenceLinear", "Int8Linear"]
        assert split.output_device.type == "cpu" and type(split.output).__name__ == "Int8Linear"
        full = DecoderModel(cfg, base.arch, reader.tensors, "cpu", "test", offload=Offload(cfg.n_layer, "cpu", "reference"))
        assert type(full.output).__name__ == "ReferenceLinear"
        _assert_same(_run(full, prompt), _run(base, prompt))


def test_no_gpu_fallback_matches_cpu(synthetic_dir, monkeypatch, capsys):
    monkeypatch.setattr(triton, "available", lambda: False)
    path = _model_file(synthetic_dir, "Q4_0")
    with GGUFReader(path) as reader:
        cpu, asked = load_model(reader, "cpu"), load_model(reader, "cpu", n_gpu_layers=-1)
        assert all(d.type == "cpu" for d in asked.layer_devices)
        assert _run(asked, _prompt(1)) == _run(cpu, _prompt(1))
    assert "ignored" in capsys.readouterr().err


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("file_type", ["Q4_K_S", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "F16"])
def test_gpu_matches_cpu_reference(synthetic_dir, file_type, rounds_like_the_gpu):
    path = _model_file(synthetic_dir, file_type)
    with GGUFReader(path) as reader:
        cpu = load_model(reader, "reference")
        gpu = load_model(reader, "reference", n_gpu_layers=-1)
        assert all(d.type == "cuda" for d in gpu.layer_devices) and gpu.output_device.type == "cuda"
        for seed in range(2):
            _assert_same(_run(gpu, _prompt(seed)), _run(cpu, _prompt(seed)))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("file_type", ["Q4_K_S", "Q8_0"])
def test_hybrid_matches_full_gpu(synthetic_dir, file_type, rounds_like_the_gpu):
    path = _model_file(synthetic_dir, file_type)
    with GGUFReader(path) as reader:
        hybrid = load_model(reader, "reference", n_gpu_layers=1)
        assert [d.type for d in hybrid.layer_devices] == ["cuda", "cpu"] and hybrid.output_device.type == "cpu"
        full = load_model(reader, "reference", n_gpu_layers=-1)
        _assert_same(_run(hybrid, _prompt()), _run(full, _prompt()))


@pytest.mark.gpu
@needs_gpu
def test_batched_decode_on_gpu_matches_single(synthetic_dir):
    """Several sequences decoding together give each the tokens it gets alone (the fused GEMM path, M > 1)."""
    path = _model_file(synthetic_dir, "Q4_K_M")
    with GGUFReader(path) as reader:
        gpu = load_model(reader, "reference", n_gpu_layers=-1)
        alone = [_run(gpu, _prompt(s)) for s in range(4)]
        engine = Engine(gpu, n_ctx=128, n_seq_max=4)
        try:
            handles = [engine.submit(Request(_prompt(s), SamplingParams(temperature=0.0, n_probs=5), max_tokens=N_GEN, ignore_eos=True))
                       for s in range(4)]
            together = [[(e.token, dict(e.top)) for e in list(h)[:-1]] for h in handles]
        finally:
            engine.close()
        for got, want in zip(together, alone, strict=True):
            _assert_same(got, want)


# ---- CUDA graphs for decode (kamado/engine/cuda_graph.py) -------------------------------------------------------------


@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (5, 0.0), (0, 30.0)])
def test_paged_attention_matches_per_sequence_attention(window, softcap):
    """The batched, fixed-shape attention equals blocks.attention run sequence by sequence on the gathered keys."""
    gen = torch.Generator().manual_seed(0)
    n_slots, n_kv, n_head, dim, page = 96, 2, 6, 8, 4
    k_cache = torch.randn(n_slots, n_kv, dim, generator=gen).half()
    v_cache = torch.randn(n_slots, n_kv, dim, generator=gen).half()
    positions = torch.tensor([0, 6, 13])
    n_keys = 16
    pages = torch.randperm(n_slots // page, generator=gen)[: 3 * (n_keys // page)].reshape(3, -1)
    slot_table = (pages[:, :, None] * page + torch.arange(page)).reshape(3, n_keys)
    q = torch.randn(3, n_head, dim, generator=gen)
    got = paged_attention(q, k_cache, v_cache, slot_table, positions, 0.3, window, softcap)
    for i, pos in enumerate(positions.tolist()):
        keys = slot_table[i, : pos + 1]
        want = attention(q[i : i + 1], k_cache[keys], v_cache[keys], positions[i : i + 1], torch.arange(pos + 1), 0.3, window, softcap)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-5, atol=1e-6)


def _decode_together(model, prompts, graphs_capture: bool | None):
    """Greedy continuations of all prompts decoded in one batch; graphs_capture None: the eager engine path."""
    engine = Engine(model, n_ctx=128, n_seq_max=len(prompts))
    if graphs_capture is not None:
        engine._graphs = DecodeGraphs(model, engine.cache, capture=graphs_capture)
    try:
        params = SamplingParams(temperature=0.0, n_probs=5)
        handles = [engine.submit(Request(p, params, max_tokens=N_GEN, ignore_eos=True)) for p in prompts]
        events = [list(h) for h in handles]
    finally:
        engine.close()
    assert all(e[-1].error is None for e in events), [e[-1].error for e in events]
    return [[(e.token, dict(e.top)) for e in ev[:-1]] for ev in events]


def test_static_decode_forward_on_cpu(synthetic_dir):
    """The graph's static-buffer forward (bucketed rows and keys, padding rows, slot table, rope buffers) run eagerly on
    the CPU gives what the engine's per-sequence path gives; 3 sequences pad to a bucket of 4."""
    path = _model_file(synthetic_dir, "Q8_0")
    with GGUFReader(path) as reader:
        model = load_model(reader, "reference")
        assert not DecodeGraphs.supported(model)
        prompts = [_prompt(s) for s in range(3)]
        for got, want in zip(_decode_together(model, prompts, False), _decode_together(model, prompts, None), strict=True):
            _assert_same(got, want)


def _decode_pipelined(model, prompts, max_tokens, capture: bool, pipeline: bool, fallbacks: list | None = None):
    """Every event of greedy requests decoded together through DecodeGraphs, with or without the in-flight pipeline;
    fallbacks: gets the key positions where the pipeline could not continue on the device (next_logits gave None)."""
    engine = Engine(model, n_ctx=128, n_seq_max=len(prompts))
    graphs = engine._graphs = DecodeGraphs(model, engine.cache, capture=capture, pipeline=pipeline)
    next_logits = graphs.next_logits

    def counted(tokens, pages):
        positions = list(graphs.last.positions_filled)
        logits = next_logits(tokens, pages)
        if logits is None and fallbacks is not None:
            fallbacks.append(max(positions) + 1)
        return logits

    graphs.next_logits = counted
    try:
        handles = [engine.submit(Request(p, SamplingParams(temperature=0.0, n_probs=3), max_tokens=n, ignore_eos=True))
                   for p, n in zip(prompts, max_tokens, strict=True)]
        return [list(h) for h in handles]
    finally:
        engine.close()


def _check_pipeline(model, capture: bool):
    """The pipelined decode gives every event the step-by-step decode gives, bit for bit: sequences that end at
    different steps (the dropped in-flight rows), page boundaries (every 16 tokens) and a key bucket change (64 keys),
    where the pipeline falls back to a step filled on the host."""
    prompts = [_prompt(s) for s in range(3)]
    max_tokens = [3, 20, 54]
    plain = _decode_pipelined(model, prompts, max_tokens, capture, pipeline=False)
    fallbacks = []
    pipelined = _decode_pipelined(model, prompts, max_tokens, capture, pipeline=True, fallbacks=fallbacks)
    assert [len(e) for e in plain] == [n + 1 for n in max_tokens]
    assert pipelined == plain
    # page edges no longer stop it (the engine allocates a page a step ahead): only the 64-key bucket edge does
    assert fallbacks == [64], fallbacks


def test_pipelined_decode_on_cpu(synthetic_dir):
    path = _model_file(synthetic_dir, "Q4_K_M")
    with GGUFReader(path) as reader:
        _check_pipeline(load_model(reader), capture=False)


@pytest.mark.gpu
@needs_gpu
def test_pipelined_decode_on_gpu(synthetic_dir):
    path = _model_file(synthetic_dir, "Q4_K_M")
    with GGUFReader(path) as reader:
        _check_pipeline(load_model(reader, "reference", n_gpu_layers=-1), capture=True)


@pytest.mark.gpu
@needs_gpu
def test_cuda_graph_decode_matches_eager(synthetic_dir, monkeypatch):
    path = _model_file(synthetic_dir, "Q4_K_M")
    with GGUFReader(path) as reader:
        gpu = load_model(reader, "reference", n_gpu_layers=-1)
        assert DecodeGraphs.supported(gpu)
        monkeypatch.setenv("KAMADO_CUDA_GRAPHS", "0")
        assert not DecodeGraphs.supported(gpu)
        prompts = [_prompt(s) for s in range(3)]
        for got, want in zip(_decode_together(gpu, prompts, True), _decode_together(gpu, prompts, None), strict=True):
            _assert_same(got, want)
