"""The HTTP application: OpenAI's endpoints, llama.cpp's native ones, llama-cpp-python's /extras, /metrics.

`create_app(settings)` serves the models in `settings`; `loader` builds a backend for a model entry (kamado.Llama
by default; tests may pass a stand-in with the same methods).
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kamado import __version__
from kamado.server import schemas as s
from kamado.server.errors import APIError, install_error_handlers
from kamado.server.generation import (
    Generation,
    chat_messages,
    check_request,
    check_token_ids,
    client_chunks,
    engine_error,
    sampling_kwargs,
)
from kamado.server.guard import Guard
from kamado.server.metrics import ServerMetrics
from kamado.server.pool import ModelPool, estimate_model_bytes, load_llama
from kamado.server.settings import ModelSettings, ServerSettings
from kamado.server.streaming import ClientGone, EventStream, sse, wait_unless_disconnected

log = logging.getLogger("kamado.server")

ERRORS = {code: {"model": s.ErrorResponse} for code in (400, 401, 404, 500, 503)}
# With "stream": true the answer is Server-Sent Events; the schema describes one event (OpenAPI before 3.2).
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
STREAMABLE = {"content": {"text/event-stream": {"schema": SSE_EVENT}}}


def _refuse_unsupported(req) -> None:
    used = s.unsupported_fields(req.model_extra)
    if used:
        raise APIError(400, f"'{used[0]}' is not supported by this server yet", param=used[0], code="unsupported_field")


def _refuse_streamed_choices(req) -> None:
    if req.stream and req.n > 1:
        raise APIError(400, "n > 1 cannot be streamed yet; ask without stream for several choices", param="n", code="unsupported_field")


def _backend_call(method, stream: bool, *args, **kwargs):
    """The backend's chunk iterator, or its whole answer as the one item of an iterator."""
    if stream:
        return method(*args, stream=True, stream_options={"include_usage": True}, **kwargs)
    return iter([method(*args, stream=False, **kwargs)])


def _event_stream(gen: Generation, first: dict, parts: Callable, closing: Callable) -> EventStream:
    """Server-sent events: parts(chunk) for each chunk of the generation, then closing(). A client that left ends
    the stream quietly; an API error met mid-stream is sent as the last event. The generation is always closed."""

    async def events():
        try:
            chunk = first
            while chunk is not None:
                for part in parts(chunk):
                    yield sse(part)
                chunk = await gen.next()
            yield sse(closing())
        except ClientGone:
            pass
        except APIError as e:
            yield sse(e.body())
        finally:
            gen.close()

    return EventStream(events())


def _model_card(ms: ModelSettings) -> dict:
    return {"id": ms.name, "object": "model", "created": int(Path(ms.model).stat().st_mtime), "owned_by": "kamado"}


def create_app(settings: ServerSettings, loader: Callable = load_llama, memory_of: Callable = estimate_model_bytes) -> FastAPI:
    pool = ModelPool(settings, loader, memory_of)
    metrics = ServerMetrics(pool)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await pool.close()

    app = FastAPI(title="kamado", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API, llama.cpp's native endpoints and llama-cpp-python's extras.")
    app.state.pool = pool
    app.state.metrics = metrics
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone):
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        return engine_error(exc).response()

    async def answer(gen: Generation, stream: bool, include_usage: bool) -> Response:
        """Hold the headers until the first chunk, so that a request the engine refuses gets a real error status."""
        try:
            first = await gen.next()
        except BaseException:
            gen.close()
            raise
        if not stream:
            gen.finished = True
            gen.close()
            return JSONResponse(first)

        return _event_stream(gen, first, lambda chunk: client_chunks(chunk, include_usage), lambda: "[DONE]")

    # ---- OpenAI ----

    @app.get("/v1/models", response_model=s.ModelList, responses=ERRORS)
    async def list_models():
        return {"object": "list", "data": [_model_card(m) for m in settings.models]}

    @app.get("/v1/models/{model_id:path}", response_model=s.ModelCard, responses=ERRORS)
    async def get_model(model_id: str):
        for m in settings.models:
            if m.name == model_id:
                return _model_card(m)
        raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")

    @app.post("/v1/chat/completions", responses={200: {"model": s.ChatCompletion, **STREAMABLE}, **ERRORS})
    async def chat_completions(req: s.ChatCompletionRequest, request: Request):
        _refuse_unsupported(req)
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        _refuse_streamed_choices(req)
        messages = chat_messages(req)
        kwargs = sampling_kwargs(req, req.max_completion_tokens or req.max_tokens, settings.n_predict)
        if req.logprobs:
            kwargs.update(logprobs=True, top_logprobs=req.top_logprobs or 0)

        def run(entry):
            return _backend_call(entry.llm.create_chat_completion, req.stream, messages=messages, **kwargs)

        gen = await Generation.start(request, pool, metrics, req.model, run, check=lambda e: check_request(req, e.llm))
        return await answer(gen, req.stream, bool(req.stream_options and req.stream_options.include_usage))

    @app.post("/v1/completions", responses={200: {"model": s.Completion, **STREAMABLE}, **ERRORS})
    async def completions(req: s.CompletionRequest, request: Request):
        _refuse_unsupported(req)
        prompt = req.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"one prompt per request is supported (got {len(prompt)})", param="prompt", code="invalid_value")
            prompt = prompt[0]
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", param="best_of", code="unsupported_field")
        _refuse_streamed_choices(req)
        kwargs = sampling_kwargs(req, req.max_tokens, settings.n_predict)
        if req.logprobs is not None:
            kwargs["logprobs"] = req.logprobs
        if req.echo:
            kwargs["echo"] = True

        def run(entry):
            return _backend_call(entry.llm.create_completion, req.stream, prompt, **kwargs)

        gen = await Generation.start(request, pool, metrics, req.model, run, check=lambda e: check_request(req, e.llm, prompt),
                                     prompt_field="prompt")
        return await answer(gen, req.stream, bool(req.stream_options and req.stream_options.include_usage))

    @app.post("/v1/embeddings", response_model=s.EmbeddingList, responses=ERRORS)
    async def embeddings(req: s.EmbeddingRequest, request: Request):
        _refuse_unsupported(req)
        entry = await pool.acquire(req.model)
        try:
            await wait_unless_disconnected(request, entry.slots.acquire())
            try:
                result = await anyio.to_thread.run_sync(lambda: entry.llm.create_embedding(req.input))
            except Exception as e:
                raise engine_error(e) from e
            finally:
                entry.slots.release()
        finally:
            pool.release(entry)
        result["model"] = entry.name
        for item in result["data"]:
            vector = item["embedding"]
            if vector and isinstance(vector[0], list):
                # A model without a pooling type gives one vector per token (llama-cpp-python passes them on);
                # OpenAI's shape has one per input: their mean, as llama.cpp's mean pooling.
                vector = [sum(column) / len(vector) for column in zip(*vector)]
            if req.encoding_format == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            item["embedding"] = vector
        return result

    # ---- llama.cpp's native endpoints ----

    @app.get("/health", response_model=s.Health)
    async def health():
        return {"status": "ok"}

    @app.post("/completion", responses={200: {"model": s.NativeCompletion, **STREAMABLE}, **ERRORS})
    async def native_completion(req: s.NativeCompletionRequest, request: Request):
        _refuse_unsupported(req)
        kwargs = {k: v for k in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                                 "frequency_penalty", "ignore_eos", "stop") if (v := getattr(req, k)) is not None}
        if req.seed is not None and req.seed >= 0:
            kwargs["seed"] = req.seed
        n_predict = req.n_predict if req.n_predict >= 0 else settings.n_predict
        kwargs["max_tokens"] = n_predict if n_predict >= 0 else None

        def run(entry):
            return _backend_call(entry.llm.create_completion, req.stream, req.prompt, **kwargs)

        gen = await Generation.start(request, pool, metrics, req.model, run, prompt_field="prompt",
                                     check=lambda e: check_token_ids(req.prompt, e.llm, "prompt") if isinstance(req.prompt, list) else None)
        try:
            first = await gen.next()
        except BaseException:
            gen.close()
            raise

        def final(finish_reason) -> dict:
            usage = gen.usage or {}
            return {"content": "", "stop": True, "model": gen.entry.name, "tokens_predicted": usage.get("completion_tokens", 0),
                    "tokens_evaluated": usage.get("prompt_tokens", 0), "stop_type": "limit" if finish_reason == "length" else "stop"}

        if not req.stream:
            gen.finished = True
            gen.close()
            choice = first["choices"][0]
            return {**final(choice["finish_reason"]), "content": choice["text"]}

        reason = None

        def parts(chunk):
            nonlocal reason
            for c in chunk.get("choices", []):
                reason = c.get("finish_reason") or reason
                if c.get("text"):
                    yield {"content": c["text"], "stop": False}

        return _event_stream(gen, first, parts, lambda: final(reason))

    async def tokenize(model: str | None, text: str, add_bos: bool, special: bool) -> tuple[list[int], object]:
        entry = await pool.acquire(model)
        try:
            ids = await anyio.to_thread.run_sync(lambda: entry.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))
        except Exception as e:
            raise engine_error(e) from e
        finally:
            pool.release(entry)
        return list(ids), entry.llm

    async def detokenize(model: str | None, tokens: list[int]) -> str:
        entry = await pool.acquire(model)
        try:
            check_token_ids(tokens, entry.llm, "tokens")
            data = await anyio.to_thread.run_sync(lambda: entry.llm.detokenize(tokens))
        finally:
            pool.release(entry)
        return data.decode("utf-8", errors="replace")

    @app.post("/tokenize", response_model=s.TokenizeResponse, responses=ERRORS)
    async def native_tokenize(req: s.TokenizeRequest):
        ids, llm = await tokenize(req.model, req.content, req.add_special, req.parse_special)
        if not req.with_pieces:
            return {"tokens": ids}
        pieces = []
        for i in ids:
            raw = llm.detokenize([i])
            try:
                piece = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)  # a piece of a multi-byte character: llama-server sends its bytes
            pieces.append({"id": i, "piece": piece})
        return {"tokens": pieces}

    @app.post("/detokenize", response_model=s.DetokenizeResponse, responses=ERRORS)
    async def native_detokenize(req: s.DetokenizeRequest):
        return {"content": await detokenize(req.model, req.tokens)}

    @app.get("/props", response_model=s.Props, responses=ERRORS)
    async def props(model: str | None = Query(None, description="a served model's name (default: the first)")):
        entry = await pool.acquire(model)
        try:
            n_ctx = entry.llm.n_ctx()
            template = entry.llm.metadata.get("tokenizer.chat_template") or ""
        finally:
            pool.release(entry)
        return {"default_generation_settings": {"n_ctx": n_ctx, "n_predict": settings.n_predict, "model": entry.name},
                "total_slots": entry.settings.n_parallel, "model_alias": entry.name, "chat_template": template,
                "build_info": f"kamado {__version__}"}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---- llama-cpp-python's extras ----

    @app.post("/extras/tokenize", response_model=s.ExtrasTokenizeResponse, responses=ERRORS)
    async def extras_tokenize(req: s.ExtrasTokenizeRequest):
        ids, _ = await tokenize(req.model, req.input, True, True)
        return {"tokens": ids}

    @app.post("/extras/tokenize/count", response_model=s.ExtrasCountResponse, responses=ERRORS)
    async def extras_tokenize_count(req: s.ExtrasTokenizeRequest):
        ids, _ = await tokenize(req.model, req.input, True, True)
        return {"count": len(ids)}

    @app.post("/extras/detokenize", response_model=s.ExtrasDetokenizeResponse, responses=ERRORS)
    async def extras_detokenize(req: s.ExtrasDetokenizeRequest):
        return {"text": await detokenize(req.model, req.tokens)}

    # llama-server also answers without the /v1 prefix.
    for path, endpoint, methods in (("/models", list_models, ["GET"]), ("/chat/completions", chat_completions, ["POST"]),
                                    ("/completions", completions, ["POST"]), ("/embeddings", embeddings, ["POST"])):
        app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)

    known = {route.path for route in app.routes}
    app.add_middleware(Guard, api_key=settings.api_key, metrics=metrics, known_paths=known)
    return app
