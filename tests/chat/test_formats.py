# ruff: noqa: E501  (reference prompts are kept as single literals, as llama-cpp-python produced them)
"""Named chat formats against llama-cpp-python 0.3.36 (llama_cpp/llama_chat_format.py).

The expected prompts were produced by running llama-cpp-python's own format functions on CONVERSATION;
gemma, open-orca and saiga deliberately differ from it (see kamado/chat/formats.py) and are checked
against llama.cpp's built-in gemma template / the kept turns instead.
"""

import pytest

from kamado.chat import CHAT_FORMATS, ChatTemplateError, get_chat_format

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]

LLAMA_CPP_PYTHON = [
    ("llama-2", "[INST] <<SYS>>\nYou are terse.\n<</SYS>> Hi there [/INST]Hello! </s><s>[INST]Name a colour.  [/INST]", ()),
    (
        "llama-3",
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>",),
    ),
    ("alpaca", "You are terse.\n\n### Instruction: Hi there\n\n### Response: Hello!</s>### Instruction: Name a colour.\n\n", ()),
    (
        "qwen",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        ("<|endoftext|>",),
    ),
    (
        "vicuna",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hi there ASSISTANT: Hello!</s>USER: Name a colour. ASSISTANT:",
        (),
    ),
    (
        "oasst_llama",
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n<|prompter|>Hi there</s><|assistant|>Hello!</s><|prompter|>Name a colour.</s><|assistant|>",
        (),
    ),
    ("baichuan-2", "You are terse.<reserved_106>Hi there<reserved_107>Hello!<reserved_106>Name a colour.<reserved_107>", ()),
    ("baichuan", "You are terse.<reserved_102>Hi there<reserved_103>Hello!<reserved_102>Name a colour.<reserved_103>", ()),
    (
        "openbuddy",
        "You are a helpful, respectful and honest INTP-T AI Assistant named Buddy. You are talking to a human User.\nAlways answer as helpfully and logically as possible, while being safe. Your answers should not include any harmful, political, religious, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\nYou can speak fluently in many languages, for example: English, Chinese.\nYou cannot access the internet, but you have vast knowledge, cutoff: 2021-09.\nYou are trained by OpenBuddy team, (https://openbuddy.ai, https://github.com/OpenBuddy/OpenBuddy), you are based on LLaMA and Falcon transformers model, not related to GPT or OpenAI.\n\n\nUser: Hi there\nAssistant: Hello!\nUser: Name a colour.\nAssistant:",
        (),
    ),
    ("redpajama-incite", "You are terse.\n<human>: Hi there\n<bot>: Hello!\n<human>: Name a colour.\n<bot>:", ("<human>",)),
    ("snoozy", "You are terse.\n### Prompt: Hi there\n### Response: Hello!\n### Prompt: Name a colour.\n### Response:", ("###",)),
    (
        "phind",
        "### System Prompt\nYou are an intelligent programming assistant.\n\n### User Message: Hi there\n\n### Assistant: Hello!\n\n### User Message: Name a colour.\n\n### Assistant:",
        (),
    ),
    ("intel", "### System:\n{system_message}\n### User:: Hi there\n### Assistant:: Hello!\n### User:: Name a colour.\n### Assistant::", ()),
    (
        "mistrallite",
        "<|system|>You are terse.</s><|prompter|>Hi there </s>\n<|assistant|>Hello! <|prompter|>Name a colour. </s>\n<|assistant|>",
        (),
    ),
    (
        "zephyr",
        "<|system|>\nYou are terse.</s>\n<|user|>\n\nHi there</s>\n<|assistant|>\n\nHello!</s>\n<|user|>\n\nName a colour.</s>\n<|assistant|>\n\n",
        ("</s>",),
    ),
    (
        "pygmalion",
        "<|system|>You are terse.\n\n<|user|>\nHi there\n\n<|model|>\nHello!\n\n<|user|>\nName a colour.\n\n<|model|>\n",
        ("\n",),
    ),
    (
        "chatml",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_end|>",),
    ),
    ("mistral-instruct", "[INST] Hi there [/INST]Hello!</s>[INST] Name a colour. [/INST]", ("</s>",)),
    ("chatglm3", "<|system|>\nYou are terse.<|user|>\n Hi there<|assistant|>\n Hello!<|user|>\n Name a colour.<|assistant|>", ("</s>",)),
    (
        "openchat",
        "You are terse.<|end_of_turn|><|end_of_turn|>\nGPT4 Correct User: \nHi there<|end_of_turn|>\n<|end_of_turn|>GPT4 Correct Assistant: \nHello!<|end_of_turn|>\nGPT4 Correct User: \nName a colour.<|end_of_turn|>\n<|end_of_turn|>GPT4 Correct Assistant: \n",
        ("<|end_of_turn|>",),
    ),
]


@pytest.mark.parametrize("name,prompt,stop", LLAMA_CPP_PYTHON, ids=[c[0] for c in LLAMA_CPP_PYTHON])
def test_matches_llama_cpp_python(name, prompt, stop):
    fmt = get_chat_format(name)
    assert fmt.render(CONVERSATION) == prompt
    assert fmt.stop == stop


def test_every_required_name_is_registered():
    required = {c[0] for c in LLAMA_CPP_PYTHON} | {"gemma", "open-orca", "saiga", "phi-3", "plain"}
    assert required == set(CHAT_FORMATS)


def test_gemma_follows_llama_cpp_builtin_template():
    # llama.cpp src/llama-chat.cpp (gemma): the system text goes before the first user turn, separated by a blank line.
    expected = (
        "<start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert get_chat_format("gemma").render(CONVERSATION) == expected
    assert get_chat_format("gemma").render([{"role": "user", "content": "  hi \n"}]) == (
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_open_orca_and_saiga_keep_the_turns_llama_cpp_python_drops():
    orca = get_chat_format("open-orca").render(CONVERSATION)
    assert orca.endswith(
        "<|end_of_turn|>\nUser: Hi there<|end_of_turn|>\nAssistant: Hello!<|end_of_turn|>\nUser: Name a colour.<|end_of_turn|>\nAssistant: "
    )
    saiga = get_chat_format("saiga").render(CONVERSATION)
    assert saiga == "<s>system\nYou are terse.</s><s>user\nHi there</s><s>bot\nHello!</s><s>user\nName a colour.</s><s>bot"


def test_phi3_layout():
    prompt = get_chat_format("phi-3").render(CONVERSATION)
    assert prompt == (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nName a colour.<|end|>\n<|assistant|>\n"
    )


def test_bad_requests_are_refused_with_clear_errors():
    with pytest.raises(ChatTemplateError, match="unknown chat format 'nope'"):
        get_chat_format("nope")
    with pytest.raises(ChatTemplateError, match="cannot describe tools"):
        get_chat_format("chatml").render(CONVERSATION, tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]"):
        get_chat_format("chatml").render([{"content": "no role"}])
