"""What a chat template can do, found the way llama.cpp finds it: render probe conversations and watch which
parts of the input the template reads (llama.cpp's common/jinja/caps.cpp does the same with value statistics).

The answers decide how messages are adapted before the real render (system prompt merged into the first user
turn, tool-call arguments as objects or strings, content as a string or a list of parts) and whether
`enable_thinking` defaults to true.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Template

from kamado.chat.sandbox import ChatTemplateError, run_limited

PROBE_LINE_BUDGET = 200_000
_PROBE_DATE = datetime(2026, 1, 1)


class _ReadLog:
    def __init__(self):
        self.paths: set[str] = set()


class _WatchedDict(dict):
    """A dict that records which of its keys a template read (by key, by attribute, or by iterating it)."""

    def __init__(self, data: dict, log: _ReadLog, path: str):
        super().__init__(data)
        self._log = log
        self._path = path

    def _mark(self, key) -> None:
        self._log.paths.add(f"{self._path}.{key}")

    def __getitem__(self, key):
        self._mark(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self._mark(key)
        return super().get(key, default)

    def _mark_all(self) -> None:
        for key in dict.keys(self):
            self._mark(key)

    def items(self):
        self._mark_all()
        return super().items()

    def values(self):
        self._mark_all()
        return super().values()

    def __iter__(self):
        self._mark_all()
        return super().__iter__()


class _IndexWatchedStr(str):
    """A string that records whether a template indexed it like a list of content parts."""

    def __new__(cls, value: str, log: _ReadLog, path: str):
        self = super().__new__(cls, value)
        self._log = log
        self._path = path
        return self

    def note_list_use(self) -> None:
        self._log.paths.add(self._path + "[]")

    def __getitem__(self, index):
        if isinstance(index, int):
            self.note_list_use()
        return super().__getitem__(index)


def watch(value: Any, log: _ReadLog, path: str) -> Any:
    if isinstance(value, dict):
        return _WatchedDict({k: watch(v, log, f"{path}.{k}") for k, v in value.items()}, log, path)
    if isinstance(value, list):
        return [watch(v, log, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


@dataclass(frozen=True)
class TemplateCaps:
    supports_string_content: bool = True
    supports_typed_content: bool = False
    supports_system_role: bool = True
    supports_tools: bool = True
    supports_tool_calls: bool = True
    supports_object_arguments: bool = False
    supports_thinking: bool = False


_TOOLS = [
    {
        "name": "tool",
        "type": "function",
        "function": {
            "name": "tool1",
            "description": "Tool description",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "Arg description"}},
                "required": ["arg"],
            },
        },
    }
]


def _tool_call_conversation(arguments) -> list[dict]:
    call = {"id": "call00001", "type": "function", "function": {"name": "tool1", "arguments": arguments}}
    return [
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ]


def _probe(template: Template, context: dict) -> tuple[bool, str]:
    try:
        fixed = {"bos_token": "", "eos_token": "", "add_generation_prompt": True, "strftime_now": _PROBE_DATE.strftime}
        return True, run_limited(lambda: template.render({**fixed, **context}), PROBE_LINE_BUDGET)
    except ChatTemplateError:
        return False, ""


def detect_caps(template: Template) -> TemplateCaps:
    log = _ReadLog()
    content = _IndexWatchedStr("content", log, "m0.content")
    ok, _ = _probe(template, {"messages": [_WatchedDict({"role": "user", "content": content}, log, "m0")]})
    supports_string_content = ok
    supports_typed_content = "m0.content[]" in log.paths

    log = _ReadLog()
    system_probe = [{"role": "system", "content": "System message"}, {"role": "user", "content": "User message"}]
    _probe(template, {"messages": watch(system_probe, log, "m")})
    supports_system_role = "m[0].content" in log.paths

    supports_tools = supports_tool_calls = True
    supports_object_arguments = False
    log = _ReadLog()
    ok, _ = _probe(template, {"messages": watch(_tool_call_conversation({"arg": "value"}), log, "m"), "tools": watch(_TOOLS, log, "t")})
    if ok:
        supports_tools = "t[0].function.name" in log.paths
        supports_tool_calls = "m[1].tool_calls" in log.paths
        supports_object_arguments = supports_tool_calls and "m[1].tool_calls[0].function.arguments.arg" in log.paths
    if not supports_object_arguments:
        log = _ReadLog()
        ok, _ = _probe(
            template, {"messages": watch(_tool_call_conversation('{"arg": "value"}'), log, "m"), "tools": watch(_TOOLS, log, "t")}
        )
        supports_tools = ok and "t[0].function.name" in log.paths
        supports_tool_calls = ok and "m[1].tool_calls" in log.paths

    return TemplateCaps(
        supports_string_content=supports_string_content,
        supports_typed_content=supports_typed_content,
        supports_system_role=supports_system_role,
        supports_tools=supports_tools,
        supports_tool_calls=supports_tool_calls,
        supports_object_arguments=supports_object_arguments,
        supports_thinking=_detect_thinking(template),
    )


def _detect_thinking(template: Template) -> bool:
    """Whether the template has a thinking switch at the generation prompt.

    llama.cpp turns `enable_thinking` on by default only where its template analyser finds reasoning markers
    around the assistant's turn. The test here: the text after the user's message differs between
    enable_thinking true and false. A switch that only changes the system preamble (Apertus' 'Deliberation:')
    does not count, as it does not for llama.cpp.
    """
    marker = "kamado-probe-3f1d"
    tails = []
    for enabled in (True, False):
        ok, out = _probe(template, {"messages": [{"role": "user", "content": marker}], "enable_thinking": enabled})
        if not ok or marker not in out:
            return False
        tails.append(out[out.rindex(marker) + len(marker) :])
    return tails[0] != tails[1]
