"""Templates are untrusted input: every escape attempt and runaway computation ends in ChatTemplateError."""

import pytest

from kamado.chat import ChatTemplate, ChatTemplateError

MESSAGES = [{"role": "user", "content": "hi"}]


def render(source: str, **kwargs) -> str:
    return ChatTemplate(source, "<s>", "</s>").render(MESSAGES, **kwargs)


@pytest.mark.parametrize(
    "source,problem",
    [
        ("{{ ''.__class__ }}", "__class__"),
        ("{% if ''.__class__ %}x{% endif %}", "__class__"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "__class__"),
        ("{{ raise_exception.__globals__ }}", "__globals__"),
        ("{{ messages.__class__.__base__ }}", "__class__"),
        ("{{ cycler.__init__.__globals__.os }}", "__init__"),
        ("{{ namespace.mro() }}", "mro"),
        ("{{ lipsum.__globals__['os'].popen('id').read() }}", "__globals__"),
        ("{{ messages[0].content.format.__globals__ }}", "__globals__"),
        ("{{ strftime_now.__self__.__class__ }}", "__self__"),
    ],
)
def test_attribute_escapes_are_refused(source, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        render(source)


@pytest.mark.parametrize(
    "source",
    ["{% include '/etc/passwd' %}", "{% import 'os' as os %}", "{% extends '/etc/passwd' %}", "{% from 'x' import y %}"],
)
def test_loading_other_templates_or_files_is_refused(source):
    with pytest.raises(ChatTemplateError, match="may not load other templates"):
        render(source)


def test_mutating_inputs_is_refused():
    with pytest.raises(ChatTemplateError, match="unsafe attribute 'append' of a list"):
        render("{% set _ = messages.append({'role': 'user'}) %}")


@pytest.mark.parametrize(
    "source,problem",
    [
        ("{{ 'a' * 100000000 }}", "sequence of 100000000"),
        ("{{ [0] * 100000000 }}", "sequence of 100000000"),
        ("{{ 9 ** 999999999 }}", "huge power"),
        ("{% for i in range(1000000000) %}{% endfor %}", "Range too big"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran too long"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    ],
)
def test_runaway_computation_is_stopped(source, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        render(source)


def test_syntax_errors_name_the_line():
    with pytest.raises(ChatTemplateError, match=r"syntax error \(line 2\)"):
        ChatTemplate("ok\n{% if %}", "", "")


def test_raise_exception_reaches_the_caller():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}")


def test_a_failed_render_restores_the_previous_tracer():
    import sys

    before = sys.gettrace()
    with pytest.raises(ChatTemplateError):
        render("{{ ''.__class__ }}")
    assert sys.gettrace() is before
