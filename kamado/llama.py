"""`Llama`: the high-level Python API, shaped like llama-cpp-python's so code written for it runs unchanged.

It loads a GGUF file, builds the model, tokenizer and chat formatter, and submits every request to one
kamado.engine.Engine (continuous batching; several threads may call the same Llama at once).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from kamado.engine import Engine, FinishEvent, Request, SamplingParams, TokenEvent, embed, perplexity
from kamado.gguf.reader import GGUFReader
from kamado.models import is_encoder, load_model

# llama-cpp-python's LLAMA_DEFAULT_SEED: "pick a random seed".
LLAMA_DEFAULT_SEED = 0xFFFFFFFF


class Llama:
    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 512,
        n_gpu_layers: int = 0,
        seed: int = LLAMA_DEFAULT_SEED,
        n_threads: int | None = None,
        n_batch: int = 512,
        chat_format: str | None = None,
        embedding: bool = False,
        verbose: bool = True,
        n_seq_max: int = 4,
        kernels: str = "cpu",
        **_ignored,
    ):
        from kamado.chat import resolve_chat_format
        from kamado.tokenizer import Tokenizer

        self.model_path = str(model_path)
        if not Path(model_path).is_file():
            raise ValueError(f"Model path does not exist: {model_path}")
        if n_threads:
            torch.set_num_threads(n_threads)
        self.verbose = verbose
        self._reader = GGUFReader(model_path)
        self.metadata = {k: v if isinstance(v, str) else str(v) for k, v in self._reader.metadata.items() if not isinstance(v, list)}
        self.model = load_model(self._reader, kernels, n_ctx=n_ctx, progress=self._progress if verbose else None,
                                n_gpu_layers=n_gpu_layers)
        self.tokenizer_ = Tokenizer.from_gguf(self._reader)
        self._n_ctx = n_ctx or self.model.cfg.n_ctx_train
        if is_encoder(self.model):  # an encoder sees at most the positions it was trained for
            self._n_ctx = min(self._n_ctx, self.model.cfg.n_ctx_train)
        self.n_batch = n_batch
        self.seed = seed
        self.embedding = embedding
        self.chat_format = chat_format
        self.chat_handler = resolve_chat_format(self._reader.metadata, chat_format)
        # An encoder (BERT) only embeds: no engine, no KV cache; generation requests are refused (_engine).
        self.engine = None if is_encoder(self.model) else Engine(self.model, self.tokenizer_, n_ctx=self._n_ctx, n_seq_max=n_seq_max,
                                                                 n_batch=n_batch)

    def _engine(self) -> Engine:
        if self.engine is None:
            arch = self.model.cfg.arch
            raise ValueError(f"{self.model_path}: {arch} is an encoder model: it computes embeddings (create_embedding / embed) "
                             "and cannot generate text")
        return self.engine

    def _progress(self, done: int, total: int) -> None:
        print(f"\rloading {Path(self.model_path).name}: layer {done}/{total}", end="\n" if done == total else "", flush=True)

    # ---- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer_.encode(text.decode("utf-8", errors="replace"), add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False) -> bytes:
        return self.tokenizer_.decode_bytes(tokens, skip_special=not special)

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self.model.cfg.n_vocab

    def token_bos(self) -> int:
        return self.tokenizer_.bos_id

    def token_eos(self) -> int:
        return self.tokenizer_.eos_id

    def kv_cache_usage(self) -> tuple[int, int]:
        """(KV cells held by running requests, KV cells in all): for the server's /metrics."""
        if self.engine is None:
            return 0, 0
        cache = self.engine.cache
        used = cache.n_pages - len(cache.free) - len(cache.cached)
        return used * cache.page_size, cache.n_pages * cache.page_size

    def reset(self) -> None:
        """Nothing to reset: history reuse is the engine's prefix cache, shared by all requests."""

    # ---- completions ------------------------------------------------------------------------
    def _params(self, temperature, top_p, top_k, min_p, typical_p, repeat_penalty, frequency_penalty, presence_penalty,
                seed, n_probs, logit_bias) -> SamplingParams:
        if seed is None and self.seed != LLAMA_DEFAULT_SEED:
            seed = self.seed
        return SamplingParams(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed, n_probs=n_probs,
            logit_bias={int(k): float(v) for k, v in logit_bias.items()} if logit_bias else None,
        )

    def _run(self, prompt_tokens: list[int], params: SamplingParams, max_tokens, stop, n: int, ignore_eos: bool = False):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        engine = self._engine()
        handles = []
        for i in range(n):
            p = params if i == 0 or params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + i})
            handles.append(engine.submit(Request(prompt_tokens, p, max_tokens if max_tokens is not None else -1, stops, ignore_eos)))
        return handles

    def create_completion(self, prompt: str | list[int], suffix: str | None = None, max_tokens: int | None = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                          logprobs: int | None = None, echo: bool = False, stop=None, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, logit_bias: dict | None = None, n: int = 1, ignore_eos: bool = False, **_ignored):
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt.encode(), add_bos=True, special=True) if prompt else [self.tokenizer_.bos_id]
        else:
            tokens = list(prompt)
        params = self._params(temperature, top_p, top_k, min_p, typical_p, repeat_penalty, frequency_penalty, presence_penalty,
                              seed, logprobs or 0, logit_bias)
        handles = self._run(tokens, params, max_tokens, stop, n, ignore_eos)
        cid, created = f"cmpl-{uuid.uuid4()}", int(time.time())
        prefix = (prompt if isinstance(prompt, str) else self.detokenize(tokens).decode("utf-8", "replace")) if echo else ""
        if stream:
            return self._stream_completion(handles[0], cid, created, prefix, _include_usage(_ignored))
        choices, usage = [], None
        for i, h in enumerate(handles):
            text, events, finish = self._collect(h)
            lp = self._completion_logprobs(events, len(prefix)) if logprobs else None
            choices.append({"text": prefix + text, "index": i, "logprobs": lp, "finish_reason": finish.reason})
            usage = self._usage(finish, usage)
        return {"id": cid, "object": "text_completion", "created": created, "model": self.model_path, "choices": choices, "usage": usage}

    __call__ = create_completion

    def _stream_completion(self, handle, cid, created, prefix, include_usage: bool = False) -> Iterator[dict]:
        def chunk(text, finish):
            return {"id": cid, "object": "text_completion", "created": created, "model": self.model_path,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        try:  # closing the iterator early (a client that left) cancels the request and frees its KV pages
            if prefix:
                yield chunk(prefix, None)
            for event in handle:
                if isinstance(event, TokenEvent):
                    if event.text:
                        yield chunk(event.text, None)
                else:
                    _raise_if_error(event)
                    yield chunk(event.text, event.reason)
                    if include_usage:
                        yield {**chunk("", None), "choices": [], "usage": self._usage(event, None)}
        finally:
            handle.cancel()

    @staticmethod
    def _collect(handle) -> tuple[str, list[TokenEvent], FinishEvent]:
        events, parts = [], []
        for event in handle:
            if isinstance(event, TokenEvent):
                events.append(event)
                parts.append(event.text)
            else:
                _raise_if_error(event)
                parts.append(event.text)
                return "".join(parts), events, event
        raise RuntimeError("the engine ended a request without a finish event")

    @staticmethod
    def _usage(finish: FinishEvent, previous: dict | None) -> dict:
        completion = finish.completion_tokens + (previous["completion_tokens"] if previous else 0)
        return {"prompt_tokens": finish.prompt_tokens, "completion_tokens": completion, "total_tokens": finish.prompt_tokens + completion}

    def _piece(self, token: int) -> str:
        return self.tokenizer_.token_to_piece(token).decode("utf-8", errors="replace")

    def _completion_logprobs(self, events: list[TokenEvent], offset: int) -> dict:
        tokens, offsets, token_logprobs, top = [], [], [], []
        for e in events:
            piece = self._piece(e.token)
            tokens.append(piece)
            offsets.append(offset)
            offset += len(piece)
            token_logprobs.append(e.logprob)
            top.append({self._piece(t): lp for t, lp in e.top})
        return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_logprobs, "top_logprobs": top}

    # ---- chat -------------------------------------------------------------------------------
    def create_chat_completion(self, messages: list[dict], temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                               min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False, stop=None, seed: int | None = None,
                               max_tokens: int | None = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, logit_bias: dict | None = None, logprobs: bool | None = None,
                               top_logprobs: int | None = None, n: int = 1, tools=None, ignore_eos: bool = False, **_ignored):
        prompt = self.chat_handler.render(messages, add_generation_prompt=True, tools=tools)
        tokens = self.tokenize(prompt.encode(), add_bos=self.tokenizer_.add_bos, special=True)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stops += list(getattr(self.chat_handler, "stop", ()) or ())
        n_probs = (top_logprobs or 0) if logprobs else 0
        params = self._params(temperature, top_p, top_k, min_p, typical_p, repeat_penalty, frequency_penalty, presence_penalty,
                              seed, n_probs, logit_bias)
        handles = self._run(tokens, params, max_tokens, stops, n, ignore_eos)
        cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
        if stream:
            return self._stream_chat(handles[0], cid, created, bool(logprobs), _include_usage(_ignored))
        choices, usage = [], None
        for i, h in enumerate(handles):
            text, events, finish = self._collect(h)
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": {"content": [self._chat_logprob(e) for e in events]} if logprobs else None,
                            "finish_reason": finish.reason})
            usage = self._usage(finish, usage)
        return {"id": cid, "object": "chat.completion", "created": created, "model": self.model_path, "choices": choices, "usage": usage}

    def _chat_logprob(self, e: TokenEvent) -> dict:
        def entry(token: int, logprob: float) -> dict:
            piece = self.tokenizer_.token_to_piece(token)
            return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}

        return entry(e.token, e.logprob) | {"top_logprobs": [entry(t, lp) for t, lp in e.top]}

    def _stream_chat(self, handle, cid, created, logprobs: bool, include_usage: bool = False) -> Iterator[dict]:
        def chunk(delta, finish, lp=None):
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_path,
                    "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        try:  # closing the iterator early (a client that left) cancels the request and frees its KV pages
            yield chunk({"role": "assistant"}, None)
            for event in handle:
                if isinstance(event, TokenEvent):
                    if event.text:
                        yield chunk({"content": event.text}, None, {"content": [self._chat_logprob(event)]} if logprobs else None)
                else:
                    _raise_if_error(event)
                    if event.text:
                        yield chunk({"content": event.text}, None)
                    yield chunk({}, event.reason)
                    if include_usage:
                        yield {**chunk({}, None), "choices": [], "usage": self._usage(event, None)}
        finally:
            handle.cancel()

    # ---- embeddings and scoring ---------------------------------------------------------------
    def embed(self, input: str | list[str], normalize: bool = False, truncate: bool = True, return_count: bool = False):
        texts = [input] if isinstance(input, str) else list(input)
        out, count = [], 0
        for text in texts:
            tokens = self.tokenize(text.encode(), add_bos=True, special=True)
            if len(tokens) > self._n_ctx:
                if not truncate:
                    raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {self._n_ctx}")
                tokens = tokens[: self._n_ctx]
            count += len(tokens)
            out.append(embed(self.model, tokens, self.model.cfg.pooling, normalize).tolist())
        result = out[0] if isinstance(input, str) else out
        return (result, count) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict:
        data, count = self.embed(input, return_count=True)
        data = [data] if isinstance(input, str) else data
        return {"object": "list", "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                "model": model or self.model_path, "usage": {"prompt_tokens": count, "total_tokens": count}}

    def perplexity(self, text: str, n_ctx: int = 512) -> float:
        tokens = self.tokenize(text.encode(), add_bos=True, special=False)
        return perplexity(self.model, tokens, n_ctx, self.tokenizer_.bos_id if self.tokenizer_.add_bos else None)[0]


def _include_usage(options: dict) -> bool:
    """OpenAI's stream_options={"include_usage": True}: a last chunk with empty choices and the token counts."""
    return bool((options.get("stream_options") or {}).get("include_usage"))


def _raise_if_error(event: FinishEvent) -> None:
    if event.reason == "error":
        raise RuntimeError(event.error)
