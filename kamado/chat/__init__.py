"""Chat templates: sandboxed Jinja templates from GGUF metadata (rendered as llama.cpp renders them), the named
chat formats of llama-cpp-python, and the choice between them (resolve_chat_format)."""

from kamado.chat.formats import CHAT_FORMATS, ChatFormat, get_chat_format
from kamado.chat.resolve import resolve_chat_format
from kamado.chat.sandbox import ChatTemplateError, TemplateRaisedError
from kamado.chat.template import ChatTemplate

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "ChatTemplate",
    "ChatTemplateError",
    "TemplateRaisedError",
    "get_chat_format",
    "resolve_chat_format",
]
