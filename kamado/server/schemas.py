"""Request and response schemas: OpenAI's (chat, completions, embeddings, models), llama.cpp's native endpoints and
llama-cpp-python's /extras.

Requests accept fields they do not know (llama-cpp-python does: seed 004's curl sends a misspelt 'templature'),
except OpenAI fields kamado cannot honour yet, which are refused by name (`unsupported_fields`) rather than
silently ignored. Response models exist for the OpenAPI document; handlers build plain dicts of that shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI request fields kamado does not implement: a request that uses them gets a 400 naming the field.
# (field -> the value that means "not used", which is accepted)
UNSUPPORTED_FIELDS: dict[str, Any] = {
    "tools": None, "tool_choice": "none", "functions": None, "function_call": "none", "parallel_tool_calls": None,
    "audio": None, "prediction": None, "web_search_options": None, "grammar": None, "json_schema": None,
    "suffix": None, "reasoning_effort": None,
    # llama-server's /completion: token probabilities are only on /v1/completions (logprobs)
    "n_probs": 0,
}


def unsupported_fields(extra: dict[str, Any] | None) -> list[str]:
    """Names of the unsupported fields a request really uses (empty lists and their 'off' values do not count)."""
    used = []
    for name, off in UNSUPPORTED_FIELDS.items():
        value = (extra or {}).get(name)
        if value is not None and value != off and value != [] and value != {}:
            used.append(name)
    return used


class _Request(BaseModel):
    # strict: a value of the wrong JSON type is refused, not coerced (false is not 0, "1" is not 1)
    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"] = Field(description="only plain text; json_object and json_schema are not supported yet")


class Sampling(_Request):
    """Sampling fields shared by chat and text completions (OpenAI's, then llama.cpp's extras)."""

    model: str | None = Field(None, description="a served model's name (see /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="default: the server's -n, or until the context is full")
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 16 strings")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    user: str | None = None
    # llama.cpp's extra sampling fields
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=100.0, description="1.0: off")
    ignore_eos: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if stops is not None and any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        for key, bias in (v or {}).items():
            if not key.strip().isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"] = Field(description="only text parts: this server has no image or audio input")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="text, token ids, or a list of either")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=16, description="only best_of == n is supported")

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("must not be empty")
        return v


class EmbeddingRequest(_Request):
    input: str | list[str] = Field(description="text or a list of texts (token-id input is not supported yet)")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v


class NativeCompletionRequest(_Request):
    """llama-server's /completion."""

    prompt: str | list[int]
    model: str | None = None
    n_predict: int = Field(-1, ge=-1, description="-1: the server's -n, or until the context is full")
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=100.0, description="1.0: off")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: list[str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    ignore_eos: bool | None = None


class TokenizeRequest(_Request):
    content: str
    model: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Request):
    tokens: list[int]
    model: str | None = None


class ExtrasTokenizeRequest(_Request):
    input: str
    model: str | None = None


class ExtrasDetokenizeRequest(_Request):
    tokens: list[int]
    model: str | None = None


# ---- responses (documentation for the OpenAPI schema) ----


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class NativeCompletion(BaseModel):
    content: str
    stop: bool
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    stop_type: Literal["limit", "stop"]


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int]


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeResponse(BaseModel):
    content: str


class ExtrasTokenizeResponse(BaseModel):
    tokens: list[int]


class ExtrasCountResponse(BaseModel):
    count: int


class ExtrasDetokenizeResponse(BaseModel):
    text: str


class Health(BaseModel):
    status: Literal["ok"]


class Props(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    default_generation_settings: dict[str, Any]
    total_slots: int
    model_alias: str
    chat_template: str
    build_info: str
