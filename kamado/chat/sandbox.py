"""The Jinja environment chat templates run in.

Templates come from model files, i.e. from strangers, so they run in Jinja2's ImmutableSandboxedEnvironment,
hardened further here: unsafe attributes fail loudly at once (plain Jinja returns a silent Undefined), loading
other templates is refused, oversized string/list products and exponents are refused, and every render has a
budget of executed template lines so that nested loops or runaway recursion end with an error, not a hang.

On top of the sandbox sits what Hugging Face's `apply_chat_template` gives templates (trim_blocks,
lstrip_blocks, loop controls, `{% generation %}`, `raise_exception`, `strftime_now`, its `tojson`) and the one
leniency of llama.cpp's own Jinja engine that real templates rely on: `+` between a string and None/undefined
treats the missing side as an empty string.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from jinja2 import BaseLoader, nodes, pass_context
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template is malformed, tried to leave its sandbox, exceeded a limit, or raised an error itself."""


class TemplateRaisedError(ChatTemplateError):
    """The template called raise_exception(message): it refuses the conversation (e.g. 'System role not supported')."""


# Limits far above anything a real chat template needs.
MAX_SEQUENCE_PRODUCT = 1 << 20  # longest string/list a `*` may build
MAX_EXPONENT_BITS = 4096  # largest integer `**` may build, in bits
DEFAULT_LINE_BUDGET = 5_000_000  # template lines one render may execute

_TEMPLATE_FILENAME = "<template>"  # the filename Jinja gives templates compiled from a string


class _NoTemplateLoading(BaseLoader):
    def get_source(self, environment, template):
        raise ChatTemplateError(f"chat templates may not load other templates (include/import/extends of {template!r})")


class _GenerationExtension(Extension):
    """`{% generation %}...{% endgeneration %}`: Hugging Face marks assistant text with it; it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def raise_exception(message: str = "") -> None:
    raise TemplateRaisedError(str(message))


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    """Hugging Face's tojson: plain json.dumps (non-ASCII kept, no HTML escaping as Jinja's own tojson would do)."""
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _selectattr_noting_list_use(selectattr):
    """selectattr that tells a capability probe (kamado.chat.caps) when a message's content is filtered like a list of parts."""

    @pass_context
    def wrapped(context, value, *args, **kwargs):
        note = getattr(value, "note_list_use", None)
        if note is not None:
            note()
        return selectattr(context, value, *args, **kwargs)

    return wrapped


def _is_missing(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


class ChatSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**"})

    def __init__(self):
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _GenerationExtension],
            loader=_NoTemplateLoading(),
        )
        self.filters["tojson"] = tojson
        self.filters["selectattr"] = _selectattr_noting_list_use(self.filters["selectattr"])
        self.globals["raise_exception"] = raise_exception

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Undefined:
        raise ChatTemplateError(f"chat template tried to access the unsafe attribute {attribute!r} of a {type(obj).__name__} object")

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":
            # llama.cpp's engine concatenates a string with None/undefined as if it were ''; templates rely on it.
            if isinstance(left, str) and _is_missing(right):
                return left
            if isinstance(right, str) and _is_missing(left):
                return right
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_SEQUENCE_PRODUCT:
                    raise ChatTemplateError(
                        f"chat template tried to build a sequence of {len(seq) * count} items (limit {MAX_SEQUENCE_PRODUCT})"
                    )
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and right * abs(left).bit_length() > MAX_EXPONENT_BITS:
                raise ChatTemplateError(f"chat template tried to compute the huge power {left} ** {right}")
        return super().call_binop(context, operator, left, right)

    def compile_template(self, source: str):
        try:
            return self.from_string(source)
        except TemplateError as e:
            where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
            raise ChatTemplateError(f"chat template syntax error{where}: {e.message or e}") from None


def run_limited(render: Callable[[], str], line_budget: int = DEFAULT_LINE_BUDGET) -> str:
    """Call render() counting the template lines it executes; past line_budget it fails with ChatTemplateError.

    A Python trace function is the only hook that sees every iteration of a loop with an empty body; it is
    installed on template frames only, so the rest of the interpreter runs at full speed.
    """
    steps = 0

    def trace_lines(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > line_budget:
                raise ChatTemplateError(f"chat template ran too long (more than {line_budget} template steps)")
        return trace_lines

    def trace_calls(frame, event, arg):
        return trace_lines if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(trace_calls)
    try:
        return render()
    except RecursionError:
        raise ChatTemplateError("chat template recursed too deeply") from None
    except ChatTemplateError:
        raise
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        sys.settrace(previous)
