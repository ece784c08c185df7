"""Streaming mechanics over real HTTP with the FakeLlama stand-in: SSE framing, include_usage, the openai client,
and a client that leaves mid-stream cancelling its generation."""

from __future__ import annotations

import json
import time

import httpx
import openai

from tests.server.fake_backend import REPLY_WORDS

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def events(r: httpx.Response) -> list:
    out = []
    for line in r.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_stream_is_sse_ending_with_done(fake_server):
    srv = fake_server()
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake" and c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)  # not asked for
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(REPLY_WORDS)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_include_usage_adds_a_last_chunk_without_choices(fake_server):
    srv = fake_server()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3}
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body) as r:
        got = events(r)
    assert got[-1] == "[DONE]"
    last = got[-2]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3
    assert got[-3]["choices"][0]["finish_reason"] == "length"


def test_non_streaming_answers(fake_server):
    srv = fake_server()
    r = httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "n": 2, "max_tokens": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert choice["message"] == {"role": "assistant", "content": "".join(REPLY_WORDS[:4])}
        assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert srv.backends["fake"].calls[-1]["stream"] is False
    text = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "Once", "max_tokens": 2}).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "".join(REPLY_WORDS[:2])
    assert text["usage"]["prompt_tokens"] == 5  # BOS + 4 bytes, as the fake counts


def test_request_fields_reach_the_backend(fake_server):
    srv = fake_server(n_predict=7)
    httpx.post(f"{srv.url}/v1/chat/completions", json={
        **CHAT, "temperature": 0.2, "top_k": 5, "min_p": 0.1, "seed": 42, "stop": "END", "logit_bias": {"10": -100},
        "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                                 {"type": "text", "text": "b"}]}],
    })
    call = srv.backends["fake"].calls[-1]
    assert call["temperature"] == 0.2 and call["top_k"] == 5 and call["min_p"] == 0.1 and call["seed"] == 42
    assert call["stop"] == ["END"] and call["logit_bias"] == {10: -100}
    assert call["max_tokens"] == 7  # the server's -n when the request sets none
    assert call["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}]
    httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "max_completion_tokens": 3, "seed": -1})
    call = srv.backends["fake"].calls[-1]
    assert call["max_tokens"] == 3 and "seed" not in call


def test_openai_client_streams(fake_server):
    srv = fake_server()
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
    parts = []
    for chunk in client.chat.completions.create(model="fake", messages=CHAT["messages"], stream=True):
        if chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == "".join(REPLY_WORDS)
    completion = client.completions.create(model="fake", prompt="x", max_tokens=2)
    assert completion.choices[0].text == "".join(REPLY_WORDS[:2])
    embedding = client.embeddings.create(model="fake", input=["ab", "abc"])
    assert [d.embedding[0] for d in embedding.data] == [2.0, 3.0]


def test_client_leaving_mid_stream_cancels_the_generation(fake_server):
    srv = fake_server(token_delay_s=0.3)
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: ")
    backend = srv.backends["fake"]
    deadline = time.monotonic() + 5
    while backend.closed_early == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.closed_early == 1 and backend.finished == 0  # stopped well before its ~3 s of words
    assert backend.active == 0 and backend.kv_cache_usage()[0] == 0
    assert srv.app.state.pool.loaded["fake"].slots.running == 0
    assert 'kamado_requests_cancelled_total{model="fake"} 1.0' in httpx.get(f"{srv.url}/metrics").text


def test_native_completion_stream_and_json(fake_server):
    srv = fake_server()
    body = httpx.post(f"{srv.url}/completion", json={"prompt": "Hi", "n_predict": 3}).json()
    assert body["content"] == "".join(REPLY_WORDS[:3]) and body["stop"] is True
    assert body["tokens_predicted"] == 3 and body["tokens_evaluated"] == 3 and body["stop_type"] == "limit"
    with httpx.stream("POST", f"{srv.url}/completion", json={"prompt": "Hi", "stream": True}) as r:
        got = events(r)
    assert "[DONE]" not in got  # llama-server's native stream has no [DONE]
    assert "".join(e["content"] for e in got) == "".join(REPLY_WORDS)
    assert got[-1]["stop"] is True and got[-1]["stop_type"] == "stop" and all(e["stop"] is False for e in got[:-1])
