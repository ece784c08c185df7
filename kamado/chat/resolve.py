"""Which chat formatting a model gets: the one decision `kamado run`, the Python API and the server share."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kamado.chat.formats import ChatFormat, get_chat_format
from kamado.chat.template import TEMPLATE_KEY, ChatTemplate

# Models without a template whose family is unambiguous from general.architecture.
_ARCHITECTURE_FORMATS = (("gemma", "gemma"), ("phi3", "phi-3"))

# What llama.cpp itself falls back to for a model without a template.
DEFAULT_CHAT_FORMAT = "chatml"


def resolve_chat_format(
    metadata: Mapping[str, Any], chat_format: str | None = None, *, now: datetime | None = None
) -> ChatTemplate | ChatFormat:
    """The formatter for a model, chosen in this order:

    1. chat_format, when given: one of the named formats (kamado.chat.formats.CHAT_FORMATS);
    2. the model's own Jinja template, `tokenizer.chat_template` in its GGUF metadata;
    3. a named format guessed from `general.architecture` (gemma* -> gemma, phi3 -> phi-3), since those
       families use one fixed layout (the Gemma 3 270M GGUF, for one, ships without a template);
    4. chatml, which is what llama.cpp uses for a model without a template.
    Both results have `.render(messages, add_generation_prompt=True, tools=None)`; ChatFormat also has `.stop`.
    """
    if chat_format is not None:
        return get_chat_format(chat_format)
    if metadata.get(TEMPLATE_KEY) is not None:
        return ChatTemplate.from_metadata(metadata, now=now)
    architecture = str(metadata.get("general.architecture", ""))
    for prefix, name in _ARCHITECTURE_FORMATS:
        if architecture.startswith(prefix):
            return get_chat_format(name)
    return get_chat_format(DEFAULT_CHAT_FORMAT)
