"""Named chat formats: llama-cpp-python's `chat_format=` names (llama_cpp/llama_chat_format.py) plus phi-3.

Each format reproduces llama-cpp-python's prompt text and stop strings exactly, quirks included (alpaca ends
without a '### Response:' cue, intel prints a literal '{system_message}'), with three deliberate exceptions:
- gemma follows llama.cpp's built-in gemma template instead: a system message is put in front of the first user
  turn (llama-cpp-python drops it) and contents are stripped of surrounding whitespace;
- open-orca and saiga: llama-cpp-python's role tables never match 'user'/'assistant' (open-orca) or
  'assistant' (saiga), so it silently drops those turns; here they are kept (User/Assistant, bot).
phi-3 is llama.cpp's built-in phi3 template.

Like llama-cpp-python, only string contents are rendered (anything else counts as empty) and every prompt ends
with the cue for the assistant's reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kamado.chat.sandbox import ChatTemplateError

Turns = list[tuple[str, str | None]]


@dataclass(frozen=True)
class ChatFormat:
    name: str
    build: Callable[[Sequence[Mapping[str, Any]]], str]
    stop: tuple[str, ...] = ()

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, tools: Sequence[Mapping] | None = None
    ) -> str:
        if not add_generation_prompt:
            raise ChatTemplateError(
                f"chat format {self.name!r} always ends with the assistant's cue (add_generation_prompt=False is unsupported)"
            )
        if tools:
            raise ChatTemplateError(f"chat format {self.name!r} cannot describe tools; use a model with a tool-aware chat template")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise ChatTemplateError(f"messages[{i}] must be an object with a 'role' string")
        return self.build(messages)


def _system(messages) -> str:
    for m in messages:
        if m["role"] == "system":
            return m.get("content") or ""
    return ""


def _turns(messages, roles: Mapping[str, str], reply_cue: bool = True) -> Turns:
    turns: Turns = []
    for m in messages:
        if m["role"] in roles:
            content = m.get("content")
            turns.append((roles[m["role"]], content if isinstance(content, str) else None))
    if reply_cue:
        turns.append((roles["assistant"], None))
    return turns


# The layouts llama-cpp-python's formats share. An empty (None) content is the slot the model fills.


def _llama2_layout(system: str, turns: Turns, sep: str, sep2: str) -> str:
    seps = (sep, sep2)
    out = system + sep
    for i, (role, text) in enumerate(turns):
        if system and i == 0:
            out += (text or "") + seps[i % 2]
        elif text:
            out += role + text + " " + seps[i % 2]
        else:
            out += role + " "
    return out


def _colon_layout(system: str, turns: Turns, seps: tuple[str, ...], cue_suffix: str = "") -> str:
    out = system + seps[0]
    for i, (role, text) in enumerate(turns):
        out += f"{role}: {text}{seps[i % len(seps)]}" if text else f"{role}:{cue_suffix}"
    return out


def _plain_layout(system: str, turns: Turns, sep: str) -> str:
    out = system
    for role, text in turns:
        out += role + text + sep if text else role
    return out


def _chatml_layout(system: str, turns: Turns, sep: str) -> str:
    out = "" if system == "" else system + sep + "\n"
    for role, text in turns:
        out += f"{role}\n{text}{sep}\n" if text else f"{role}\n"
    return out


def _llama2(messages) -> str:
    system = _system(messages)
    head = f"[INST] <<SYS>>\n{system}\n<</SYS>>" if system else ""
    return _llama2_layout(head, _turns(messages, {"user": "<s>[INST]", "assistant": "[/INST]"}, reply_cue=False), " ", "</s>") + "[/INST]"


_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"


def _llama3(messages) -> str:
    roles = {r: _HEADER.format(r) for r in ("system", "user", "assistant")}
    return _plain_layout("", _turns(messages, roles), "<|eot_id|>")


def _alpaca(messages) -> str:
    turns = _turns(messages, {"user": "### Instruction", "assistant": "### Response"}, reply_cue=False)
    return _colon_layout(_system(messages), turns, ("\n\n", "</s>"))


def _qwen(messages) -> str:
    head = "<|im_start|>system\n" + (_system(messages) or "You are a helpful assistant.")
    return _chatml_layout(head, _turns(messages, {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"}), "<|im_end|>")


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)


def _vicuna(messages) -> str:
    return _colon_layout(_VICUNA_SYSTEM, _turns(messages, {"user": "USER", "assistant": "ASSISTANT"}), (" ", "</s>"))


def _oasst_llama(messages) -> str:
    head = f"[INST] <<SYS>>\n{_system(messages)}\n<</SYS>>\n\n"
    return _plain_layout(head, _turns(messages, {"user": "<|prompter|>", "assistant": "<|assistant|>"}), "</s>")


def _baichuan(user: str, assistant: str) -> Callable:
    return lambda messages: _plain_layout(_system(messages), _turns(messages, {"user": user, "assistant": assistant}), "")


_OPENBUDDY_SYSTEM = """You are a helpful, respectful and honest INTP-T AI Assistant named Buddy. You are talking to a human User.
Always answer as helpfully and logically as possible, while being safe. Your answers should not include any harmful, political, \
religious, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased \
and positive in nature.
If a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. \
If you don't know the answer to a question, please don't share false information.
You can speak fluently in many languages, for example: English, Chinese.
You cannot access the internet, but you have vast knowledge, cutoff: 2021-09.
You are trained by OpenBuddy team, (https://openbuddy.ai, https://github.com/OpenBuddy/OpenBuddy), you are based on LLaMA and \
Falcon transformers model, not related to GPT or OpenAI.

"""


def _openbuddy(messages) -> str:
    return _colon_layout(_OPENBUDDY_SYSTEM, _turns(messages, {"user": "User", "assistant": "Assistant"}), ("\n",))


def _redpajama(messages) -> str:
    return _colon_layout(_system(messages), _turns(messages, {"user": "<human>", "assistant": "<bot>"}), ("\n",))


_SNOOZY_SYSTEM = (
    "The prompt below is a question to answer, a task to complete, or a conversation to respond to; "
    "decide which and write an appropriate response."
)


def _snoozy(messages) -> str:
    return _colon_layout(
        _system(messages) or _SNOOZY_SYSTEM, _turns(messages, {"user": "### Prompt", "assistant": "### Response"}), ("\n",)
    )


def _phind(messages) -> str:
    head = "### System Prompt\nYou are an intelligent programming assistant."
    return _colon_layout(head, _turns(messages, {"user": "### User Message", "assistant": "### Assistant"}), ("\n\n",))


def _intel(messages) -> str:
    return _colon_layout("### System:\n{system_message}", _turns(messages, {"user": "### User:", "assistant": "### Assistant:"}), ("\n",))


_OPEN_ORCA_SYSTEM = (
    "You are a helpful assistant. Please answer truthfully and write out your thinking step by step to be sure you get the right "
    "answer. If you make a mistake or encounter an error in your thinking, say so out loud and attempt to correct it. If you don't "
    "know or aren't sure about something, say so clearly. You will act as a professional logician, mathematician, and physicist. "
    "You will also act as the most appropriate type of expert to answer any particular question or solve the relevant problem; "
    "state which expert type your are, if so. Also think of any particular named expert that would be ideal to answer the relevant "
    "question or solve the relevant problem; name and act as them, if appropriate."
)


def _open_orca(messages) -> str:
    return _colon_layout(
        _OPEN_ORCA_SYSTEM, _turns(messages, {"user": "User", "assistant": "Assistant"}), ("<|end_of_turn|>\n",), cue_suffix=" "
    )


def _mistrallite(messages) -> str:
    head = f"<|system|>{_system(messages)}</s>"
    return _plain_layout(head, _turns(messages, {"user": "<|prompter|>", "assistant": "</s>\n<|assistant|>"}), " ")


def _zephyr(messages) -> str:
    head = f"<|system|>\n{_system(messages)}"
    return _chatml_layout(head, _turns(messages, {"user": "<|user|>\n", "assistant": "<|assistant|>\n"}), "</s>")


def _pygmalion(messages) -> str:
    head = f"<|system|>{_system(messages)}"
    return _chatml_layout(head, _turns(messages, {"user": "<|user|>", "assistant": "<|model|>"}), "\n")


def _chatml(messages) -> str:
    head = f"<|im_start|>system\n{_system(messages)}"
    return _chatml_layout(head, _turns(messages, {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"}), "<|im_end|>")


def _mistral_instruct(messages) -> str:
    out = ""
    for m in messages:
        content = m.get("content")
        if m["role"] == "user" and isinstance(content, str):
            out += "[INST] " + content
        elif m["role"] == "assistant" and content is not None:
            out += " [/INST]" + str(content) + "</s>"
    return out + " [/INST]"


def _chatglm3(messages) -> str:
    out = f"<|system|>\n{_system(messages)}"
    for role, text in _turns(messages, {"user": "<|user|>", "assistant": "<|assistant|>"}):
        out += f"{role}\n {text}" if text else role
    return out


def _openchat(messages) -> str:
    head = f"{_system(messages)}<|end_of_turn|>"
    roles = {"user": "GPT4 Correct User: ", "assistant": "<|end_of_turn|>GPT4 Correct Assistant: "}
    return _chatml_layout(head, _turns(messages, roles), "<|end_of_turn|>")


def _saiga(messages) -> str:
    out = ""
    for role, text in _turns(messages, {"user": "user", "system": "system", "assistant": "bot", "bot": "bot"}, reply_cue=False):
        out += f"<s>{role}\n{text}</s>" if text else f"<s>{role}\n"
    return (out + "<s>bot").strip()


def _gemma(messages) -> str:
    system = ""
    out = ""
    for m in messages:
        content = m.get("content")
        text = content.strip() if isinstance(content, str) else ""
        if m["role"] == "system":
            system += text
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out += f"<start_of_turn>{role}\n"
        if system and role != "model":
            out += system + "\n\n"
            system = ""
        out += text + "<end_of_turn>\n"
    return out + "<start_of_turn>model\n"


def _plain(messages) -> str:
    # For models without a chat template, which are nearly always base models: plain "User:"/"Assistant:"
    # lines that a model trained on ordinary text continues sensibly; the next "User:" line ends the answer.
    system = _system(messages)
    turns = _turns(messages, {"user": "User", "assistant": "Assistant"})
    return (system + "\n\n" if system else "") + "".join(f"{role}: {text}\n" if text else f"{role}:" for role, text in turns)


def _phi3(messages) -> str:
    out = "".join(f"<|{m['role']}|>\n{m.get('content') or ''}<|end|>\n" for m in messages)
    return out + "<|assistant|>\n"


CHAT_FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        ChatFormat("llama-2", _llama2),
        ChatFormat("llama-3", _llama3, ("<|eot_id|>",)),
        ChatFormat("alpaca", _alpaca),
        ChatFormat("qwen", _qwen, ("<|endoftext|>",)),
        ChatFormat("vicuna", _vicuna),
        ChatFormat("oasst_llama", _oasst_llama),
        ChatFormat("baichuan-2", _baichuan("<reserved_106>", "<reserved_107>")),
        ChatFormat("baichuan", _baichuan("<reserved_102>", "<reserved_103>")),
        ChatFormat("openbuddy", _openbuddy),
        ChatFormat("redpajama-incite", _redpajama, ("<human>",)),
        ChatFormat("snoozy", _snoozy, ("###",)),
        ChatFormat("phind", _phind),
        ChatFormat("intel", _intel),
        ChatFormat("open-orca", _open_orca, ("User",)),
        ChatFormat("mistrallite", _mistrallite),
        ChatFormat("zephyr", _zephyr, ("</s>",)),
        ChatFormat("pygmalion", _pygmalion, ("\n",)),
        ChatFormat("chatml", _chatml, ("<|im_end|>",)),
        ChatFormat("mistral-instruct", _mistral_instruct, ("</s>",)),
        ChatFormat("chatglm3", _chatglm3, ("</s>",)),
        ChatFormat("openchat", _openchat, ("<|end_of_turn|>",)),
        ChatFormat("saiga", _saiga),
        ChatFormat("gemma", _gemma, ("<end_of_turn>",)),
        ChatFormat("phi-3", _phi3, ("<|end|>",)),
        ChatFormat("plain", _plain, ("\nUser:",)),
    )
}


def get_chat_format(name: str) -> ChatFormat:
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise ChatTemplateError(f"unknown chat format {name!r}; known formats: {', '.join(sorted(CHAT_FORMATS))}") from None
