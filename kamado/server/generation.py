"""From an HTTP request to the engine and back: Llama keyword arguments, one slot per request, the answer (one
dict, or a stream of chunks), and the engine's exceptions as OpenAI errors.

A slot is given back only when the backend call has really ended: a stream is closed (its request cancelled in
the engine) as soon as its client leaves, while a one-piece answer whose client left runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from starlette.requests import Request

from kamado.server.errors import APIError
from kamado.server.metrics import ServerMetrics
from kamado.server.pool import LoadedModel, ModelPool
from kamado.server.schemas import ChatCompletionRequest, Sampling
from kamado.server.streaming import ChunkPump, ClientGone, wait_unless_disconnected

log = logging.getLogger("kamado.server")

# llama-cpp-python's wording for a prompt that does not fit: "Requested tokens (N) exceed context window of M".
_OVERFLOW = re.compile(r"(?i)requested tokens \((\d+)\) exceed context window of (\d+)")

_PASSED_THROUGH = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "ignore_eos")


def engine_error(e: BaseException, prompt_field: str = "messages") -> APIError:
    """An exception from the backend as the error the client sees: its input was wrong (400) or we failed (500)."""
    if isinstance(e, APIError):
        return e
    n_tokens, n_ctx = getattr(e, "n_prompt_tokens", None), getattr(e, "n_ctx", None)
    match = _OVERFLOW.search(str(e))
    if n_tokens is None and match:
        n_tokens, n_ctx = int(match.group(1)), int(match.group(2))
    if n_tokens is not None:
        return APIError(400, f"the request needs {n_tokens} tokens but the model's context holds {n_ctx}; shorten the prompt "
                             f"or lower max_tokens", param=prompt_field, code="context_length_exceeded")
    if isinstance(e, ValueError):
        return APIError(400, str(e), code="invalid_value")
    if str(e).startswith("SamplingError"):  # the request's sampling settings removed every candidate token
        return APIError(400, f"the sampling settings leave no token to choose: {e}", code="invalid_value")
    log.error("generation failed", exc_info=e)
    return APIError(500, f"internal error while generating: {type(e).__name__}: {e}", code="internal_error")


def sampling_kwargs(req: Sampling, max_tokens: int | None, default_max_tokens: int) -> dict:
    """The request's sampling fields as Llama keyword arguments; fields the client left out keep Llama's defaults."""
    kwargs = {name: getattr(req, name) for name in _PASSED_THROUGH if getattr(req, name) is not None}
    if req.stop:
        kwargs["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.seed is not None and req.seed >= 0:  # llama.cpp's -1 (or any negative seed) means a random one
        kwargs["seed"] = req.seed
    if req.logit_bias:
        kwargs["logit_bias"] = {int(k): v for k, v in req.logit_bias.items()}
    if max_tokens is None and default_max_tokens >= 0:
        max_tokens = default_max_tokens
    kwargs["max_tokens"] = max_tokens  # None: until the end of generation or of the context
    if req.n > 1:
        kwargs["n"] = req.n
    return kwargs


def check_logit_bias(req: Sampling, llm) -> None:
    n_vocab = llm.n_vocab()
    for key in req.logit_bias or {}:
        if int(key) >= n_vocab:
            raise APIError(400, f"logit_bias names token {int(key)}, but the model's vocabulary has {n_vocab} tokens",
                           param="logit_bias", code="invalid_value")


def check_token_ids(tokens: list[int], llm, field: str) -> None:
    """Token ids a client sent (a prompt as ids, tokens to detokenize) must exist in the model's vocabulary."""
    n_vocab = llm.n_vocab()
    for i, t in enumerate(tokens):
        if not 0 <= t < n_vocab:
            raise APIError(400, f"token id {t} is outside the vocabulary (0..{n_vocab - 1})", param=f"{field}[{i}]", code="invalid_value")


def check_request(req: Sampling, llm, prompt=None) -> None:
    """What only the loaded model can judge: logit_bias keys and prompt token ids inside its vocabulary."""
    check_logit_bias(req, llm)
    if isinstance(prompt, list):
        check_token_ids(prompt, llm, "prompt")


def chat_messages(req: ChatCompletionRequest) -> list[dict]:
    """Messages as chat templates take them: text parts joined, the 'developer' role read as 'system'."""
    out = []
    for m in req.messages:
        content = m.content if not isinstance(m.content, list) else "\n".join(part.text for part in m.content)
        message = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.name is not None:
            message["name"] = m.name
        out.append(message)
    return out


@dataclass
class Generation:
    """One request holding a model and a slot, its chunks flowing from the engine through a ChunkPump."""

    request: Request
    pool: ModelPool
    metrics: ServerMetrics
    entry: LoadedModel
    pump: ChunkPump
    prompt_field: str
    finished: bool = False
    usage: dict | None = None

    @classmethod
    async def start(cls, request: Request, pool: ModelPool, metrics: ServerMetrics, model: str | None,
                    make_iterator: Callable[[LoadedModel], Iterator[dict]], check: Callable[[LoadedModel], None] | None = None,
                    prompt_field: str = "messages"):
        """Take the model and a slot (waiting in line if need be), then start the backend call in a pump thread.
        `make_iterator` returns the backend's chunk iterator (or a one-item iterator holding the whole answer)."""
        entry = await pool.acquire(model)
        try:
            if check is not None:
                check(entry)
            await wait_unless_disconnected(request, entry.slots.acquire())
        except BaseException:
            pool.release(entry)
            raise
        loop = asyncio.get_running_loop()

        def backend_call_ended():
            loop.call_soon_threadsafe(entry.slots.release)
            loop.call_soon_threadsafe(pool.release, entry)

        return cls(request, pool, metrics, entry, ChunkPump(lambda: make_iterator(entry), on_exit=backend_call_ended), prompt_field)

    async def next(self) -> dict | None:
        """The next chunk (None at the end), with the served model's name in it; engine errors become APIError."""
        try:
            chunk = await wait_unless_disconnected(self.request, self.pump.next())
        except (ClientGone, asyncio.CancelledError):
            raise
        except BaseException as e:
            raise engine_error(e, self.prompt_field) from e
        if chunk is None:
            self.finished = True
            return None
        if isinstance(chunk, dict):
            chunk["model"] = self.entry.name
            if chunk.get("usage"):
                self.usage = chunk["usage"]
        return chunk

    def close(self) -> None:
        """Cancel the generation if it is still running (the slot comes back when the backend call ends); count it."""
        self.pump.cancel()
        if not self.finished:
            self.metrics.cancelled.labels(self.entry.name).inc()
        if self.usage:
            self.metrics.record_generation(self.entry.name, self.usage.get("prompt_tokens", 0), self.usage.get("completion_tokens", 0))


def client_chunks(chunk: dict, include_usage: bool) -> list[dict]:
    """A chunk as the client asked for it: OpenAI sends usage only with stream_options.include_usage, in a last
    chunk of its own whose choices are empty (clients such as seed 001's read choices[0] of every other chunk)."""
    usage = chunk.pop("usage", None)
    out = [chunk] if chunk.get("choices") else []
    if usage is not None and include_usage:
        out.append({**chunk, "choices": [], "usage": usage})
    return out
