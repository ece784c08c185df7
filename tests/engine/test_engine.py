"""The engine on a tiny random model: greedy equals a plain loop, batch invariance, prefix reuse, cancel, limits."""

import threading

import pytest
import torch

from kamado.engine import ContextOverflowError, Engine, FinishEvent, Request, SamplingParams, TokenEvent
from kamado.engine.engine import ROWS_PER_STEP
from kamado.models import solo_attend
from tests.models.tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", **{"attention.sliding_window": 8})


def tokens_of(events):
    return [e.token for e in events if isinstance(e, TokenEvent)]


def greedy_loop(model, prompt, n):
    attend, out, cur, pos = solo_attend(model.cfg.n_layer), [], torch.tensor(prompt), 0
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(cur, torch.arange(pos, pos + len(cur)), attend, torch.tensor([len(cur) - 1]))[0].argmax())
            pos += len(cur)
            out.append(nxt)
            cur = torch.tensor([nxt])
    return out


def test_greedy_matches_plain_loop(model):
    prompt = [1, 5, 9, 13, 2, 7, 30, 31, 32, 40, 41, 3]  # longer than the window: local layers mask
    events = Engine(model, n_ctx=64, page_size=4).generate(Request(prompt, SamplingParams(temperature=0), max_tokens=20))
    assert tokens_of(events) == greedy_loop(model, prompt, 20)
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "length" and finish.completion_tokens == 20


def test_eight_concurrent_requests_equal_their_solo_results():
    model = tiny_model("qwen2")
    params = [SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=100 + i) for i in range(8)]
    requests = [Request([1 + i, 10 + 2 * i, 20 + i, 5], p, max_tokens=12) for i, p in enumerate(params)]
    solo = [tokens_of(Engine(model, n_ctx=64).generate(r)) for r in requests]
    engine = Engine(model, n_ctx=64, n_seq_max=8)
    handles = [engine.submit(r) for r in requests]
    assert [tokens_of(h) for h in handles] == solo
    assert len({tuple(s) for s in solo}) > 1  # the seeds really differ


def test_short_prompts_share_decode_steps_with_their_solo_results(monkeypatch):
    # Prompts of at most ROWS_PER_STEP uncached tokens are computed as rows of the decode forward, in the rows left
    # free, split over steps when they do not fit: tokens, logprobs and top logprobs must still equal the solo run's.
    model = tiny_model("qwen2")
    prompts = [[1 + i, 10 + 2 * i, 20 + i] for i in range(5)] + [list(range(30 + i, 44 + i)) for i in range(3)]
    requests = [Request(p, SamplingParams(temperature=1.0, seed=7 + i, n_probs=3), max_tokens=10) for i, p in enumerate(prompts)]

    def outputs(events):
        return [(e.token, e.logprob, e.top) for e in events if isinstance(e, TokenEvent)]

    solo = [outputs(Engine(model, n_ctx=64).generate(r)) for r in requests]
    steps = []
    forward_rows = Engine._forward_rows
    monkeypatch.setattr(Engine, "_forward_rows", lambda self, rows: (steps.append(list(rows)), forward_rows(self, rows)))
    engine = Engine(model, n_ctx=64, n_seq_max=8)
    with engine._lock:  # all queued before the worker admits any, so the first steps mix prompts and decode rows
        handles = [engine.submit(r) for r in requests]
    assert [outputs(h) for h in handles] == solo
    assert max(len(rows) for rows in steps) == ROWS_PER_STEP
    # a row at a position before n_prompt computes a prompt token, any other decodes
    assert any(any(p >= s.n_prompt for s, p in rows) and any(p < s.n_prompt for s, p in rows) for rows in steps)
    prompt_steps = [{s for s, p in rows if p < s.n_prompt} for rows in steps]
    assert any(sum(seq in seqs for seqs in prompt_steps) > 1 for seq in set().union(*prompt_steps))  # a prompt was split


def test_prefix_pages_are_reused_with_the_same_result(model):
    prompt = list(range(1, 40))
    engine = Engine(model, n_ctx=64, page_size=8)
    first = engine.generate(Request(prompt, SamplingParams(temperature=0), max_tokens=5))
    second = engine.generate(Request(prompt, SamplingParams(temperature=0), max_tokens=5))
    assert first[-1].cached_tokens == 0 and second[-1].cached_tokens == 32
    assert tokens_of(first) == tokens_of(second)


def test_cancel_frees_pages_at_once(model):
    engine = Engine(model, n_ctx=64, page_size=4)
    free_before = engine.cache.available()
    handle = engine.submit(Request([1, 2, 3], SamplingParams(temperature=0), max_tokens=None, ignore_eos=True))
    it = iter(handle)
    next(it)
    handle.cancel()
    events = list(it)
    assert events[-1].reason == "cancelled"
    assert engine.cache.available() == free_before


def test_context_overflow_names_the_counts(model):
    with pytest.raises(ContextOverflowError, match=r"\(70\).*16"):
        Engine(model, n_ctx=16).submit(Request(list(range(1, 71))))


def test_generation_stops_at_the_context_end(model):
    events = Engine(model, n_ctx=16).generate(Request([1, 2, 3, 4, 5, 6], SamplingParams(temperature=0), max_tokens=100, ignore_eos=True))
    assert events[-1].reason == "length" and len(tokens_of(events)) == 10


def test_submit_is_thread_safe(model):
    engine = Engine(model, n_ctx=64, n_seq_max=4)
    results = {}

    def worker(i):
        results[i] = tokens_of(engine.generate(Request([i + 1, 7], SamplingParams(temperature=0), max_tokens=6)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == greedy_loop(engine.model, [i + 1, 7], 6) for i in range(6))


@pytest.mark.parametrize("arch,batches,again", [("gemma3", [8, 4], [8, 4]), ("qwen2", [12], [1])])
def test_ggml_backend_runs_prompts_in_llama_servers_batches(arch, batches, again, monkeypatch):
    """The "ggml" backend's rows depend on their batch, so its engine batches as llama-server: one sequence at a time,
    a sliding-window model's prompt apart from its last 4 tokens, then one row a step; the next prompt keeps the K/V
    of its common prefix with the last request (all but its last token here), except on a sliding-window model."""
    model = tiny_model(arch, "ggml", **({"attention.sliding_window": 8} if arch == "gemma3" else {}))
    prompt = [1, 5, 9, 13, 2, 7, 30, 31, 32, 40, 41, 3]
    plain, pos, attend = [], 0, solo_attend(model.cfg.n_layer)
    with torch.inference_mode():  # the same batches by hand
        for rows in [prompt[: batches[0]], prompt[batches[0] :]][: len(batches)] + [None] * 3:
            rows = rows if rows is not None else [plain[-1]]
            logits = model(torch.tensor(rows), torch.arange(pos, pos + len(rows)), attend, torch.tensor([len(rows) - 1]))
            pos += len(rows)
            plain.append(int(logits[0].argmax()))
    sizes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda tokens, *a: sizes.append(len(tokens)) or forward(tokens, *a))
    engine = Engine(model, n_ctx=64, n_seq_max=4)
    handles = [engine.submit(Request(prompt, SamplingParams(temperature=0), 4)) for _ in range(2)]
    events = [list(h) for h in handles]
    assert tokens_of(events[0]) == plain[len(batches) - 1 :]
    assert sizes == batches + [1] * 3 + again + [1] * 3
    assert [e[-1].cached_tokens for e in events] == [0, 12 - sum(again)]
