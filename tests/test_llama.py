"""kamado.Llama on the real models against llama.cpp's recorded outputs (reference README)."""

import json

import pytest

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def qwen(qwen_path):
    import kamado

    return kamado.Llama(str(qwen_path), n_ctx=1024, verbose=False)


@pytest.fixture(scope="module")
def gemma(gemma_path):
    import kamado

    return kamado.Llama(str(gemma_path), n_ctx=1024, verbose=False)


@pytest.fixture(scope="module")
def llamacpp_arithmetic(gemma_path, qwen_path):
    """Both models with the "ggml" kernels: llama.cpp's x86 CPU arithmetic bit for bit (docs/NUMERICS.md)."""
    import kamado

    return {name: kamado.Llama(str(path), n_ctx=1024, verbose=False, kernels="ggml")
            for name, path in (("gemma3-270m", gemma_path), ("qwen25-coder-0.5b", qwen_path))}


def _chat_records(shared):
    return json.loads((shared / "reference/qwen25-coder-0.5b/llamacpp-chat.json").read_text())


def test_first_chat_record_and_response_shape(qwen, shared):
    record = _chat_records(shared)[0]
    out = qwen.create_chat_completion(record["messages"], temperature=0, max_tokens=64)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": record["content"]}
    assert choice["finish_reason"] == record["finish_reason"]
    usage = record["usage"]
    assert out["usage"] == {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def test_streamed_completion_equals_the_whole_one(qwen):
    whole = qwen("def fib(n):", max_tokens=12, temperature=0)
    chunks = list(qwen("def fib(n):", max_tokens=12, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 12


def test_tokenize_detokenize_round_trip(qwen):
    ids = qwen.tokenize(b"Hello world")
    assert qwen.detokenize(ids) == b"Hello world"
    assert qwen.n_ctx() == 1024 and qwen.metadata["general.architecture"] == "qwen2"


@pytest.mark.slow
def test_all_chat_records(llamacpp_arithmetic, shared):
    qwen = llamacpp_arithmetic["qwen25-coder-0.5b"]
    for record in _chat_records(shared):
        out = qwen.create_chat_completion(record["messages"], temperature=0, max_tokens=64)
        assert out["choices"][0]["message"]["content"] == record["content"]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gemma3-270m", "qwen25-coder-0.5b"])
def test_greedy_parity_with_llamacpp(which, shared, llamacpp_arithmetic):
    from tests.realmodels import greedy_gaps

    records = json.loads((shared / f"reference/{which}/llamacpp-greedy-tokenize.json").read_text())["greedy"]
    _, worst, same = greedy_gaps(llamacpp_arithmetic[which].engine, records)
    assert same == len(records) and worst <= 0.002, f"{same}/{len(records)} identical, worst top-5 logprob difference {worst:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("which,expected", [("gemma", 24.6676), ("qwen", 15.1816)])
def test_perplexity_matches_llamacpp(which, expected, shared, request):
    llm = request.getfixturevalue(which)
    text = (shared / "seeds/001_3eca53226205c1ab.txt").read_text()
    assert llm.perplexity(text, n_ctx=256) == pytest.approx(expected, rel=0.005)
