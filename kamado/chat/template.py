"""Jinja chat templates from GGUF metadata, rendered as llama.cpp renders them.

llama.cpp (`llama-server --jinja`, common/chat.cpp) is the reference. Before rendering it:
- normalises each message to {role, content, reasoning_content?, name?, tool_call_id?, tool_calls?}, with
  tool-call arguments as JSON text, parsed back into objects only for templates that read them as objects;
- maps the `developer` role to `system` (except for gpt-oss templates, which know it);
- merges a leading system message into the next message when the template ignores or refuses system messages;
- passes `bos_token`, `eos_token`, `enable_thinking` (true where the template has a thinking switch at the
  generation prompt), `add_generation_prompt` (only when true), `tools` (only when given), `date_string`
  ('24 Nov 2026') and `datetime` ('Nov 24 2026') besides Hugging Face's `strftime_now`;
and after rendering drops a leading BOS string (the tokenizer adds BOS itself) and, for vocabularies that add
EOS, a trailing EOS string. Extra keyword arguments to render() override any of these variables, as
llama.cpp's `chat_template_kwargs` do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

from kamado.chat.caps import TemplateCaps, detect_caps
from kamado.chat.sandbox import ChatSandbox, ChatTemplateError, run_limited

TEMPLATE_KEY = "tokenizer.chat_template"

# Two patches llama.cpp applies to template sources before use (common_chat_templates_init): each removes a
# check that rejects conversations llama.cpp itself produces.
_SOURCE_PATCHES = (
    (
        "<|channel|>",
        '{%- if "<|channel|>analysis<|message|>" in message.content or "<|channel|>final<|message|>" in message.content %}',
        "{%- if false %}",
    ),
    (
        "[TOOL_CALLS]",
        "{%- if (message['content'] is none or message['content'] == '' or message['content']|length == 0) and "
        "(message['tool_calls'] is not defined or message['tool_calls'] is none or message['tool_calls']|length == 0) %}",
        "{%- if false %}",
    ),
)

_sandbox = ChatSandbox()


def _patched_source(source: str) -> str:
    for marker, old, new in _SOURCE_PATCHES:
        if marker in source:
            source = source.replace(old, new)
    return source


class ChatTemplate:
    """A compiled chat template.

    source: the Jinja text; bos_token / eos_token: the strings templates see as `bos_token` / `eos_token`;
    add_bos / add_eos: whether the tokenizer adds BOS / EOS itself (then the rendered text loses a leading BOS /
    trailing EOS string, as in llama.cpp); now: a fixed datetime for `strftime_now`, `date_string` and
    `datetime` (tests), or None for the local time of each render.
    """

    def __init__(
        self,
        source: str,
        bos_token: str = "",
        eos_token: str = "",
        *,
        add_bos: bool = True,
        add_eos: bool = False,
        now: datetime | None = None,
    ):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("chat template is empty or not a string")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.now = now
        self._template = _sandbox.compile_template(_patched_source(source))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], name: str | None = None, *, now: datetime | None = None) -> ChatTemplate:
        """The template stored in GGUF metadata (`tokenizer.chat_template`, or `tokenizer.chat_template.NAME`).

        BOS/EOS strings come from `tokenizer.ggml.tokens` at `tokenizer.ggml.bos_token_id` / `eos_token_id`.
        """
        key = TEMPLATE_KEY if name is None else f"{TEMPLATE_KEY}.{name}"
        source = metadata.get(key)
        if source is None:
            names = sorted(k[len(TEMPLATE_KEY) + 1 :] for k in metadata if k.startswith(TEMPLATE_KEY + "."))
            available = f" (named templates present: {', '.join(names)})" if names else ""
            raise ChatTemplateError(f"GGUF metadata has no {key}{available}")
        if not isinstance(source, str):
            raise ChatTemplateError(f"GGUF metadata {key} is a {type(source).__name__}, not a string")
        return cls(
            source,
            special_token_text(metadata, "bos"),
            special_token_text(metadata, "eos"),
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", _default_add_bos(metadata))),
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
            now=now,
        )

    @cached_property
    def caps(self) -> TemplateCaps:
        return detect_caps(self._template)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping] | None = None,
        *,
        enable_thinking: bool | None = None,
        documents: Sequence[Mapping] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for a conversation (OpenAI-style messages), as llama.cpp's `/apply-template` returns it.

        enable_thinking None means llama.cpp's default: on where the template has a thinking switch.
        Other keyword arguments become template variables (like llama.cpp's chat_template_kwargs).
        """
        now = self.now or datetime.now()
        context: dict[str, Any] = {
            "messages": self._adapt_messages(messages),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "enable_thinking": self.caps.supports_thinking if enable_thinking is None else enable_thinking,
            "strftime_now": now.strftime,
            "datetime": now.strftime("%b %d %Y"),
            "date_string": now.strftime("%d %b %Y"),
        }
        if tools:
            context["tools"] = [_normalize_tool(tool, f"tools[{i}]") for i, tool in enumerate(_plain(tools, "tools"))]
        if documents:
            context["documents"] = _plain(documents, "documents")
        context.update(kwargs)
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        text = run_limited(lambda: self._template.render(context))
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.add_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text

    def _adapt_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict]:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ChatTemplateError(f"messages must be a list of message objects, not {type(messages).__name__}")
        caps = self.caps
        adapted = [_normalize_message(m, i, caps) for i, m in enumerate(messages)]
        if "<|channel|>" not in self.source:
            for m in adapted:
                if m["role"] == "developer":
                    m["role"] = "system"
        if not caps.supports_system_role and adapted and adapted[0]["role"] == "system":
            system = adapted.pop(0)
            if adapted:
                adapted[0]["content"] = _text_of(system["content"]) + "\n" + _text_of(adapted[0]["content"])
        return adapted


def _normalize_message(message: Mapping[str, Any], index: int, caps: TemplateCaps) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"{where} must be an object, not {type(message).__name__}")
    if not isinstance(message.get("role"), str):
        raise ChatTemplateError(f"{where} has no 'role' string")
    if "content" not in message and "tool_calls" not in message:
        raise ChatTemplateError(f"{where} needs 'content' or 'tool_calls'")
    out: dict[str, Any] = {"role": message["role"], "content": _normalize_content(message.get("content"), where, caps)}
    for key in ("reasoning_content", "name", "tool_call_id"):
        value = message.get(key)
        if value:
            if not isinstance(value, str):
                raise ChatTemplateError(f"{where}.{key} must be a string")
            out[key] = value
    if message.get("tool_calls"):
        out["tool_calls"] = [_normalize_tool_call(call, f"{where}.tool_calls[{i}]", caps) for i, call in enumerate(message["tool_calls"])]
    return out


def _normalize_content(content: Any, where: str, caps: TemplateCaps) -> str | list[dict]:
    if content is None:
        parts: list[dict] = []
    elif isinstance(content, str):
        if caps.supports_typed_content and not caps.supports_string_content:
            return [{"type": "text", "text": content}]
        return content
    elif isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(f"{where}.content[{i}]: only text parts can be rendered by a chat template, not {kind!r}")
            parts.append({"type": "text", "text": part["text"]})
    else:
        raise ChatTemplateError(f"{where}.content must be a string, a list of text parts or null, not {type(content).__name__}")
    if not parts:
        return ""
    if caps.supports_string_content and not caps.supports_typed_content:
        return "\n".join(p["text"] for p in parts)
    return parts


def _normalize_tool_call(call: Any, where: str, caps: TemplateCaps) -> dict:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ChatTemplateError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'arguments': ...}}}}")
    if call.get("type", "function") != "function":
        raise ChatTemplateError(f"{where}: unsupported tool call type {call.get('type')!r}")
    arguments = function.get("arguments", "{}")
    if caps.supports_object_arguments:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise ChatTemplateError(f"{where}.function.arguments is not valid JSON: {e}") from None
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _normalize_tool(tool: Any, where: str) -> dict:
    """llama.cpp passes tools on as {type: function, function: {name, description, parameters}} and nothing else."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function" or not isinstance(function.get("name"), str):
        raise ChatTemplateError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": function.get("parameters", {}),
        },
    }


def _text_of(content: str | list[dict]) -> str:
    return content if isinstance(content, str) else "\n".join(p["text"] for p in content)


def _plain(value: Any, where: str) -> Any:
    """A JSON-like deep copy: templates may not mutate or reach into the caller's objects."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ChatTemplateError(f"{where} must be JSON-serialisable: {e}") from None


def special_token_text(metadata: Mapping[str, Any], which: str) -> str:
    """The text of the BOS/EOS token named by tokenizer.ggml.{which}_token_id, '' when the vocabulary has none."""
    token_id = metadata.get(f"tokenizer.ggml.{which}_token_id")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if token_id is None or tokens is None:
        return ""
    token_id = int(token_id)
    if not 0 <= token_id < len(tokens):
        raise ChatTemplateError(f"tokenizer.ggml.{which}_token_id = {token_id} is outside the vocabulary of {len(tokens)} tokens")
    return str(tokens[token_id])


def _default_add_bos(metadata: Mapping[str, Any]) -> bool:
    # llama.cpp's default when the GGUF does not say: SentencePiece ('llama') vocabularies add BOS, others do not.
    return metadata.get("tokenizer.ggml.model") == "llama"
