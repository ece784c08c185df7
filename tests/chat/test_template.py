"""ChatTemplate: Hugging Face template semantics plus the message adaptation llama.cpp does before rendering."""

import json
from datetime import datetime

import pytest

from kamado.chat import ChatFormat, ChatTemplate, ChatTemplateError, TemplateRaisedError, resolve_chat_format

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HELLO = [{"role": "user", "content": "Hello"}]


def metadata(**extra):
    base = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "hi"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    return {**base, **extra}


def test_from_metadata_reads_template_and_special_token_texts():
    t = ChatTemplate.from_metadata(metadata(**{"tokenizer.chat_template": "{{ bos_token }}[{{ eos_token }}]"}))
    assert (t.bos_token, t.eos_token, t.add_bos) == ("<s>", "</s>", True)
    assert t.render(HELLO) == "[</s>]"  # the leading BOS is dropped: the tokenizer adds it


def test_named_template_variant_and_missing_template():
    md = metadata(**{"tokenizer.chat_template": "default", "tokenizer.chat_template.tool_use": "tools!"})
    assert ChatTemplate.from_metadata(md, "tool_use").render(HELLO) == "tools!"
    with pytest.raises(ChatTemplateError, match=r"no tokenizer.chat_template.rag \(named templates present: tool_use\)"):
        ChatTemplate.from_metadata(md, "rag")
    with pytest.raises(ChatTemplateError, match="bos_token_id = 9 is outside the vocabulary of 4 tokens"):
        ChatTemplate.from_metadata(metadata(**{"tokenizer.chat_template": "x", "tokenizer.ggml.bos_token_id": 9}))


def test_bos_and_eos_are_kept_when_the_tokenizer_does_not_add_them():
    t = ChatTemplate("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>", add_bos=False, add_eos=False)
    assert t.render(HELLO) == "<s>x</s>"
    t = ChatTemplate("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>", add_bos=True, add_eos=True)
    assert t.render(HELLO) == "x"


def test_add_generation_prompt_and_template_variables():
    t = ChatTemplate(CHATML, "<s>", "</s>")
    assert t.render(HELLO) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert t.render(HELLO, add_generation_prompt=False) == "<|im_start|>user\nHello<|im_end|>\n"
    assert ChatTemplate("{{ custom }}-{{ add_generation_prompt is defined }}", "", "").render(HELLO, False, custom=7) == "7-False"


def test_dates_come_from_the_injected_clock():
    t = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}|{{ datetime }}", "", "", now=datetime(2026, 11, 24))
    assert t.render(HELLO) == "2026-11-24|24 Nov 2026|Nov 24 2026"


def test_tojson_is_hugging_faces():
    t = ChatTemplate("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(separators=(',', ':')) }}", "", "")
    x = {"name": "café <b>&", "n": [1, 2]}
    assert t.render(HELLO, x=x) == "|".join(
        [
            json.dumps(x, ensure_ascii=False),
            json.dumps(x, ensure_ascii=False, indent=2),
            json.dumps(x, ensure_ascii=False, separators=(",", ":")),
        ]
    )


def test_jinja_extensions_hugging_face_enables():
    src = (
        "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% if loop.index == 3 %}{% break %}{% endif %}{% endfor %}"
    )
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "skip", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert ChatTemplate(src, "", "").render(msgs) == "ac"
    # trim_blocks and lstrip_blocks, as Hugging Face sets them
    assert ChatTemplate("A\n    {% if true %}\nB\n    {% endif %}\nC", "", "").render(HELLO) == "A\nB\nC"


def test_string_plus_missing_value_concatenates_like_llama_cpp():
    assert ChatTemplate("{{ 'a' + undefined_name + 'b' }}{{ 'c' + none }}", "", "").render(HELLO, none=None) == "abc"
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ 1 + undefined_name }}", "", "").render(HELLO)


REFUSES_SYSTEM = (
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
)


def test_system_message_is_merged_where_the_template_refuses_it():
    t = ChatTemplate(REFUSES_SYSTEM, "", "")
    assert not t.caps.supports_system_role
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert t.render(msgs) == "<user>Be brief.\nHi"


def test_raise_exception_is_a_distinct_error():
    with pytest.raises(TemplateRaisedError, match="System role not supported"):
        ChatTemplate("{{ raise_exception('System role not supported') }}", "", "").render(HELLO)


def test_developer_role_becomes_system():
    t = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}", "", "")
    assert t.render([{"role": "developer", "content": "rules"}, {"role": "user", "content": "q"}]) == "system:rules;user:q;"


OBJECT_ARGS = (
    "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }}("
    "{% for k, v in c.function.arguments.items() %}{{ k }}={{ v }}{% endfor %}){% endfor %}"
    "{% if m.role == 'tool' %}[{{ m.tool_call_id }}:{{ m.content }}]{% endif %}{% endfor %}"
)
STRING_ARGS = (
    "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments }}{% endfor %}{% endfor %}"
)
CALL = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


def test_tool_call_arguments_follow_what_the_template_reads():
    objects = ChatTemplate(OBJECT_ARGS, "", "")
    assert objects.caps.supports_object_arguments
    assert objects.render(CALL) == "get_weather(city=Paris)[c1:sunny]"
    strings = ChatTemplate(STRING_ARGS, "", "")
    assert strings.caps.supports_tool_calls and not strings.caps.supports_object_arguments
    assert strings.render(CALL) == 'get_weather{"city": "Paris"}'
    as_dict = [CALL[0], {**CALL[1], "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]
    assert strings.render(as_dict) == 'f{"a":1}'
    bad = [CALL[0], {**CALL[1], "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(ChatTemplateError, match=r"messages\[1\].tool_calls\[0\].function.arguments is not valid JSON"):
        objects.render(bad)


def test_tools_and_documents_reach_the_template():
    t = ChatTemplate("{{ tools | tojson }}|{{ documents[0].title }}", "", "")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "extra": 1}
    out = t.render(HELLO, tools=[tool], documents=[{"title": "Doc"}])
    assert out == '[{"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}]|Doc'
    with pytest.raises(ChatTemplateError, match=r"tools\[0\] must be"):
        t.render(HELLO, tools=[{"name": "f"}])
    with pytest.raises(ChatTemplateError, match=r"tools\[0\] must be"):
        t.render(HELLO, tools=["f"])


def test_text_parts_are_joined_for_string_templates():
    t = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", "", "")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert t.render(msgs) == "a\nb"
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].content\[0\]: only text parts .* 'image_url'"):
        t.render([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


@pytest.mark.parametrize(
    "messages,problem",
    [("hello", "messages must be a list"), ([{"content": "x"}], r"messages\[0\] has no 'role'"), ([{"role": "user"}], "needs 'content'")],
)
def test_malformed_messages_are_named(messages, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        ChatTemplate(CHATML, "", "").render(messages)


THINKING = "{{ messages[0].content }}{% if add_generation_prompt %}<a>{% if enable_thinking %}<think>{% endif %}{% endif %}"
PREAMBLE_SWITCH = "{% if enable_thinking %}deep {% endif %}{{ messages[0].content }}<a>"


def test_enable_thinking_defaults_on_only_for_a_switch_at_the_generation_prompt():
    assert ChatTemplate(THINKING, "", "").render(HELLO) == "Hello<a><think>"
    assert ChatTemplate(THINKING, "", "").render(HELLO, enable_thinking=False) == "Hello<a>"
    assert ChatTemplate(PREAMBLE_SWITCH, "", "").render(HELLO) == "Hello<a>"
    assert ChatTemplate(PREAMBLE_SWITCH, "", "").render(HELLO, enable_thinking=True) == "deep Hello<a>"


def test_resolve_order():
    with_template = metadata(**{"tokenizer.chat_template": CHATML})
    assert isinstance(resolve_chat_format(with_template), ChatTemplate)
    assert resolve_chat_format(with_template, "llama-3").name == "llama-3"
    # Without a template (a base model, nearly always): plain User:/Assistant: lines, whatever the family.
    for arch in ("gemma3", "phi3", "llama"):
        fallback = resolve_chat_format(metadata(**{"general.architecture": arch}))
        assert isinstance(fallback, ChatFormat) and fallback.name == "plain"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]
    assert fallback.render(conversation) == "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Capital of France?\nAssistant:"
    assert fallback.stop == ("\nUser:",)
    with pytest.raises(ChatTemplateError, match="unknown chat format"):
        resolve_chat_format(with_template, "no-such-format")


@pytest.mark.realmodel
def test_real_gemma_base_model_uses_the_plain_format(gemma_path):
    from kamado.gguf.reader import GGUFReader

    md = GGUFReader(gemma_path).metadata
    assert "tokenizer.chat_template" not in md  # the package's Gemma 3 270M is the base model
    fmt = resolve_chat_format(md)
    assert fmt.name == "plain"
    assert fmt.render([{"role": "user", "content": "Hi"}]) == "User: Hi\nAssistant:"
    assert resolve_chat_format(md, "gemma").render([{"role": "user", "content": "Hi"}]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.realmodel
def test_real_qwen_template_renders_like_llama_cpp(qwen_path, shared):
    from kamado.gguf.reader import GGUFReader

    md = GGUFReader(qwen_path).metadata
    template = resolve_chat_format(md)
    assert isinstance(template, ChatTemplate)
    assert template.eos_token == "<|im_end|>"
    # Qwen2.5's system turn layout, as llama.cpp rendered the same family's template (reference jsonl, Qwen2.5-7B case 0).
    records = [json.loads(line) for line in (shared / "reference" / "chat-templates-llamacpp.jsonl").read_text().splitlines()]
    expected = next(r for r in records if r["template"] == "Qwen-Qwen2.5-7B-Instruct.jinja" and r["case"] == 0)
    assert template.render(expected["request"]["messages"]) == expected["prompt"]
