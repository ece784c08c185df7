"""A stand-in for kamado.Llama in HTTP-layer tests (error paths, schemas, streaming mechanics, slots).

It is NOT a model: text is tokenized one UTF-8 byte per token (id = byte + 3; 0/1/2 are pad/bos/eos) and the
"generation" spells out a fixed reply one word per chunk, in llama-cpp-python's chunk format. It records what
the server did to it (arguments, streams opened and closed early) so tests can check the server's side. The
behaviour of the real engine is tested against the real model in test_realmodel.py.
"""

from __future__ import annotations

import threading
import time
import uuid

REPLY_WORDS = ["Hello", " from", " the", " fake", " backend", ".", " It", " says", " nothing", " useful", "."]
N_SPECIAL = 3


class FakeLlama:
    def __init__(self, n_ctx: int = 256, token_delay_s: float = 0.0, name: str = "fake"):
        self._n_ctx = n_ctx
        self.token_delay_s = token_delay_s
        self.metadata = {"general.architecture": "fake", "general.name": name, "tokenizer.chat_template": "{{ messages }}"}
        self.calls: list[dict] = []
        self.active = 0
        self.closed_early = 0
        self.finished = 0
        self.closed = False
        self._lock = threading.Lock()

    # ---- the Llama surface the server uses ----

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return 256 + N_SPECIAL

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return ([1] if add_bos else []) + [b + N_SPECIAL for b in text]

    def detokenize(self, tokens) -> bytes:
        return bytes(t - N_SPECIAL for t in tokens if t >= N_SPECIAL)

    def kv_cache_usage(self) -> tuple[int, int]:
        return self.active * 16, 1024

    def create_completion(self, prompt, stream=False, max_tokens=16, **kwargs):
        self.calls.append({"prompt": prompt, "stream": stream, "max_tokens": max_tokens, **kwargs})
        n_prompt = len(prompt) if isinstance(prompt, list) else len(self.tokenize(prompt.encode("utf-8")))
        chunks = self._stream(n_prompt, max_tokens, kwargs, chat=False)
        return chunks if stream else self._whole(list(chunks), "text_completion")

    def create_chat_completion(self, messages, stream=False, max_tokens=None, **kwargs):
        self.calls.append({"messages": messages, "stream": stream, "max_tokens": max_tokens, **kwargs})
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        chunks = self._stream(len(self.tokenize(text.encode("utf-8"))), max_tokens, kwargs, chat=True)
        return chunks if stream else self._whole(list(chunks), "chat.completion")

    def create_embedding(self, input, model=None):
        texts = [input] if isinstance(input, str) else input
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5, -0.25]} for i, t in enumerate(texts)]
        n = sum(len(t.encode("utf-8")) + 1 for t in texts)
        return {"object": "list", "data": data, "model": model or "fake", "usage": {"prompt_tokens": n, "total_tokens": n}}

    def close(self) -> None:
        self.closed = True

    # ---- the fake generation ----

    @staticmethod
    def _whole(chunks: list[dict], kind: str) -> dict:
        choices: dict[int, dict] = {}
        for chunk in chunks:
            for c in chunk["choices"]:
                if kind == "chat.completion":
                    choice = choices.setdefault(c["index"], {"index": c["index"], "message": {"role": "assistant", "content": ""}})
                    choice["message"]["content"] += c["delta"].get("content", "")
                else:
                    choice = choices.setdefault(c["index"], {"index": c["index"], "text": ""})
                    choice["text"] += c["text"]
                choice["logprobs"], choice["finish_reason"] = None, c["finish_reason"]
        return {"id": chunks[0]["id"], "object": kind, "created": chunks[0]["created"], "model": "fake",
                "choices": [choices[i] for i in sorted(choices)], "usage": chunks[-1]["usage"]}

    def _stream(self, n_prompt: int, max_tokens, kwargs, chat: bool):
        if n_prompt > self._n_ctx:
            raise ValueError(f"Requested tokens ({n_prompt}) exceed context window of {self._n_ctx}")
        limit = len(REPLY_WORDS) if max_tokens is None else min(max_tokens, len(REPLY_WORDS))
        n_choices = kwargs.get("n", 1)
        return self._chunks(n_prompt, limit, n_choices, chat, finish="length" if limit < len(REPLY_WORDS) else "stop")

    def _chunks(self, n_prompt, limit, n_choices, chat, finish):
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        base = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": "fake"}
        with self._lock:
            self.active += 1
        done = False
        try:
            if chat:
                yield {**base, "choices": [{"index": i, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}
                                           for i in range(n_choices)]}
            for word in REPLY_WORDS[:limit]:
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                for i in range(n_choices):
                    choice = {"index": i, "delta": {"content": word}} if chat else {"index": i, "text": word}
                    yield {**base, "choices": [{**choice, "logprobs": None, "finish_reason": None}]}
            for i in range(n_choices):
                last = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
                yield {**base, "choices": [{**last, "logprobs": None, "finish_reason": finish}]}
            yield {**base, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": limit * n_choices,
                                                    "total_tokens": n_prompt + limit * n_choices}}
            done = True
        finally:
            with self._lock:
                self.active -= 1
                if done:
                    self.finished += 1
                else:
                    self.closed_early += 1
