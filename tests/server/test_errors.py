"""Error paths over real HTTP with the FakeLlama stand-in: every error is OpenAI-shaped and names the problem."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_malformed_json_is_400(fake_server):
    srv = fake_server()
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=b'{"model": "fake", "messages": [',
                   headers={"content-type": "application/json"})
    err = assert_error(r, 400, code="invalid_json")
    assert "JSON" in err["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({**CHAT, "temperature": -1}, "temperature"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens"),
    ({"model": "fake", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "fake", "messages": []}, "messages"),
    ({"model": "fake"}, "messages"),
    ({**CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({**CHAT, "stop": ["a"] * 17}, "stop"),
])
def test_invalid_field_is_400_naming_it(fake_server, body, param):
    srv = fake_server()
    err = assert_error(httpx.post(f"{srv.url}/v1/chat/completions", json=body), 400, param=param)
    assert param.split("[")[0] in err["message"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"stream": True, "n": 2}, "n"),
])
def test_unsupported_field_is_400_not_silence(fake_server, extra, param):
    srv = fake_server()
    assert_error(httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, **extra}), 400, param=param)
    assert srv.backends.get("fake") is None or not srv.backends["fake"].calls


def test_unknown_fields_are_ignored_like_llama_cpp_python(fake_server):
    # seed 004's curl misspells temperature as "templature"; llama-cpp-python answers it, so must we
    srv = fake_server()
    r = httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "templature": 0.9, "top_p": 1.0})
    assert r.status_code == 200, r.text
    assert srv.backends["fake"].calls[-1]["top_p"] == 1.0
    assert "templature" not in srv.backends["fake"].calls[-1]


def test_unknown_model_is_404(fake_server):
    srv = fake_server(names=("alpha", "beta"))
    err = assert_error(httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "model": "gamma"}), 404, param="model",
                       code="model_not_found")
    assert "gamma" in err["message"] and "alpha" in err["message"]
    assert srv.backends == {}  # nothing was loaded
    assert_error(httpx.get(f"{srv.url}/v1/models/gamma"), 404)
    assert_error(httpx.post(f"{srv.url}/tokenize", json={"content": "x", "model": "/etc/passwd"}), 404)


def test_single_model_without_alias_answers_any_name(fake_server):
    # llama-server's behaviour with one model: seed 001's script asks for "gemma2" from whatever -m loaded
    srv = fake_server(strict_model_names=False)
    r = httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "model": "gemma2"})
    assert r.status_code == 200 and r.json()["model"] == "fake"


def test_api_key_guards_every_endpoint_but_health(fake_server):
    srv = fake_server(api_key="sesame")
    assert httpx.get(f"{srv.url}/health").status_code == 200
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT), ("GET", "/metrics", None),
                               ("POST", "/tokenize", {"content": "x"}), ("GET", "/props", None), ("GET", "/openapi.json", None),
                               ("GET", "/no/such/path", None)]:
        r = httpx.request(method, f"{srv.url}{path}", json=body)
        assert_error(r, 401, code="invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.request(method, f"{srv.url}{path}", json=body, headers={"Authorization": "Bearer wrong"})
        assert_error(r, 401, code="invalid_api_key")
    ok = httpx.post(f"{srv.url}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sesame"})
    assert ok.status_code == 200
    assert httpx.get(f"{srv.url}/v1/models", headers={"X-Api-Key": "sesame"}).status_code == 200


def test_context_overflow_is_400_with_token_counts(fake_server):
    srv = fake_server(n_ctx=64)
    long = {"model": "fake", "messages": [{"role": "user", "content": "x" * 200}]}
    err = assert_error(httpx.post(f"{srv.url}/v1/chat/completions", json=long), 400, code="context_length_exceeded")
    assert "64" in err["message"] and "208" in err["message"]  # BOS + "user: " + 200 x + newline, as the fake counts
    streamed = httpx.post(f"{srv.url}/v1/chat/completions", json={**long, "stream": True})
    assert_error(streamed, 400, code="context_length_exceeded")  # refused before any event is sent
    assert_error(httpx.post(f"{srv.url}/v1/completions", json={"prompt": "y" * 100}), 400, code="context_length_exceeded")
    # The slot is released by the request's handler as it unwinds, which may finish just after the reply is sent.
    deadline = time.monotonic() + 5
    while srv.app.state.pool.loaded["fake"].slots.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.app.state.pool.loaded["fake"].slots.running == 0


def test_queue_full_is_503(fake_server):
    srv = fake_server(n_parallel=1, queue_size=1, token_delay_s=0.2)
    streams = []

    def hold():
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30) as r:
            streams.append(r.status_code)
            for _ in r.iter_lines():
                pass

    holders = [threading.Thread(target=hold) for _ in range(2)]  # one running, one waiting
    for t in holders:
        t.start()
    slots = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entry = srv.app.state.pool.loaded.get("fake")
        slots = entry.slots if entry else None
        if slots and slots.running == 1 and slots.waiting == 1:
            break
        time.sleep(0.01)
    assert slots and slots.running == 1 and slots.waiting == 1
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=CHAT)
    err = assert_error(r, 503, code="queue_full")
    assert r.headers["retry-after"] == "1"
    assert "queue" in err["message"]
    for t in holders:
        t.join(30)
    assert streams == [200, 200]  # the queued one ran once the first finished
    assert httpx.post(f"{srv.url}/v1/chat/completions", json=CHAT).status_code == 200


def test_unknown_endpoint_and_method_are_openai_shaped(fake_server):
    srv = fake_server()
    assert_error(httpx.get(f"{srv.url}/v2/nothing"), 404)
    assert_error(httpx.get(f"{srv.url}/v1/chat/completions"), 405)


def test_detokenize_rejects_ids_outside_the_vocabulary(fake_server):
    srv = fake_server()
    assert_error(httpx.post(f"{srv.url}/detokenize", json={"tokens": [5, 100000]}), 400, param="tokens[1]")
    assert_error(httpx.post(f"{srv.url}/extras/detokenize", json={"tokens": [-1]}), 400, param="tokens[0]")


def test_logit_bias_token_outside_vocabulary_is_400(fake_server):
    srv = fake_server()
    assert_error(httpx.post(f"{srv.url}/v1/chat/completions", json={**CHAT, "logit_bias": {"999999": 5}}), 400, param="logit_bias")
    assert srv.app.state.pool.loaded["fake"].slots.running == 0


def test_prompt_token_ids_outside_the_vocabulary_are_400(fake_server):
    srv = fake_server()
    assert_error(httpx.post(f"{srv.url}/v1/completions", json={"prompt": [5, 836144408889]}), 400, param="prompt[1]")
    assert_error(httpx.post(f"{srv.url}/completion", json={"prompt": [-2]}), 400, param="prompt[0]")
    assert not srv.backends["fake"].calls
