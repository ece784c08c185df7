"""Which chat formatting a model gets: the one decision `kamado run`, the Python API and the server share."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kamado.chat.formats import ChatFormat, get_chat_format
from kamado.chat.template import TEMPLATE_KEY, ChatTemplate

# For a model without a template. llama.cpp falls back to chatml; kamado uses plain "User:"/"Assistant:"
# lines instead, because a GGUF without a template is nearly always a base model, and base models answer
# plain lines but echo or ramble on turn markup (measured on the default model, Gemma 3 270M base: chatml
# and gemma turns give echoes, plain lines give "The capital of France is Paris.").
DEFAULT_CHAT_FORMAT = "plain"


def resolve_chat_format(
    metadata: Mapping[str, Any], chat_format: str | None = None, *, now: datetime | None = None
) -> ChatTemplate | ChatFormat:
    """The formatter for a model, chosen in this order:

    1. chat_format, when given: one of the named formats (kamado.chat.formats.CHAT_FORMATS);
    2. the model's own Jinja template, `tokenizer.chat_template` in its GGUF metadata;
    3. otherwise the `plain` format (see DEFAULT_CHAT_FORMAT for why not llama.cpp's chatml).
    Both results have `.render(messages, add_generation_prompt=True, tools=None)`; ChatFormat also has `.stop`.
    """
    if chat_format is not None:
        return get_chat_format(chat_format)
    if metadata.get(TEMPLATE_KEY) is not None:
        return ChatTemplate.from_metadata(metadata, now=now)
    return get_chat_format(DEFAULT_CHAT_FORMAT)
