"""The non-generating endpoints (models, tokenize, props, metrics, health) and the multi-model pool, with the
FakeLlama stand-in."""

from __future__ import annotations

import httpx

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_models_lists_every_configured_model_without_loading_them(fake_server):
    srv = fake_server(names=("alpha", "beta"))
    body = httpx.get(f"{srv.url}/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["alpha", "beta"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    assert httpx.get(f"{srv.url}/v1/models/beta").json()["id"] == "beta"
    assert httpx.get(f"{srv.url}/models").json() == body  # llama-server's path without /v1
    assert srv.backends == {}


def test_models_load_on_first_use_and_the_least_recently_used_goes_first(fake_server):
    # budget of 2 MiB, each model 1 MiB: the third model pushes out the one used least recently
    srv = fake_server(names=("a", "b", "c"), memory_budget_mb=2, memory_of=lambda ms: 1 << 20)
    pool = srv.app.state.pool
    for name in ("a", "b", "a", "c"):
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "model": name})
        assert r.status_code == 200 and r.json()["model"] == name
    assert set(pool.loaded) == {"a", "c"}
    assert srv.backends["b"].closed and not srv.backends["a"].closed
    first_a = srv.backends["a"]
    httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "model": "a"})
    assert srv.backends["a"] is first_a  # stayed loaded: not reloaded


def test_tokenize_and_detokenize_round_trip(fake_server):
    srv = fake_server()
    ids = httpx.post(f"{srv.url}/tokenize", json={"content": "hé"}).json()["tokens"]
    assert ids == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3]  # no BOS by default, as llama-server
    with_bos = httpx.post(f"{srv.url}/tokenize", json={"content": "h", "add_special": True}).json()["tokens"]
    assert with_bos == [1, ord("h") + 3]
    pieces = httpx.post(f"{srv.url}/tokenize", json={"content": "hé", "with_pieces": True}).json()["tokens"]
    assert pieces == [{"id": ids[0], "piece": "h"}, {"id": ids[1], "piece": [0xC3]}, {"id": ids[2], "piece": [0xA9]}]
    assert httpx.post(f"{srv.url}/detokenize", json={"tokens": ids}).json() == {"content": "hé"}
    assert httpx.post(f"{srv.url}/extras/tokenize", json={"input": "ab"}).json() == {"tokens": [1, 100, 101]}
    assert httpx.post(f"{srv.url}/extras/tokenize/count", json={"input": "ab"}).json() == {"count": 3}
    assert httpx.post(f"{srv.url}/extras/detokenize", json={"tokens": [100, 101]}).json() == {"text": "ab"}


def test_embeddings_float_and_base64(fake_server):
    import base64
    import struct

    srv = fake_server()
    body = httpx.post(f"{srv.url}/v1/embeddings", json={"model": "fake", "input": "abc"}).json()
    assert body["object"] == "list" and body["model"] == "fake" and body["data"][0]["embedding"] == [3.0, 0.5, -0.25]
    b64 = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "abc", "encoding_format": "base64"}).json()
    assert list(struct.unpack("<3f", base64.b64decode(b64["data"][0]["embedding"]))) == [3.0, 0.5, -0.25]


def test_props_health_and_metrics(fake_server):
    srv = fake_server(n_predict=64)
    assert httpx.get(f"{srv.url}/health").json() == {"status": "ok"}
    props = httpx.get(f"{srv.url}/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 256 and props["default_generation_settings"]["n_predict"] == 64
    assert props["total_slots"] == 2 and props["chat_template"] == "{{ messages }}"
    httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "max_tokens": 5})
    r = httpx.get(f"{srv.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'kamado_generated_tokens_total{model="fake"} 5.0' in text
    assert 'kamado_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'kamado_requests_processing{model="fake"} 0.0' in text and 'kamado_requests_queued{model="fake"} 0.0' in text
    assert 'kamado_kv_cache_usage_ratio{model="fake"} 0.0' in text
    assert "kamado_generated_tokens_per_second 0.5" in text  # 5 tokens in the 10 s window


def test_token_level_embeddings_are_mean_pooled(fake_server):
    # a model without a pooling type (Gemma 3 270M) gives one vector per token; OpenAI's shape wants one per input
    srv = fake_server()
    httpx.get(f"{srv.url}/props")  # loads the model
    backend = srv.backends["fake"]
    backend.create_embedding = lambda input, model=None: {
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [[1.0, 2.0], [3.0, -2.0]]}],
        "model": "fake", "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    body = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "ab"}).json()
    assert body["data"][0]["embedding"] == [2.0, 0.0]
