"""Every template fixture renders exactly as llama.cpp's `/apply-template` rendered it (reference README)."""

import json
from datetime import datetime
from functools import cache

import pytest

from kamado.chat import ChatTemplate
from tests import realmodels

REFERENCE_DATE = datetime(2026, 11, 24)


def _records():
    try:
        shared = realmodels.SHARED
        lines = (shared / "reference" / "chat-templates-llamacpp.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


RECORDS = _records()


@cache
def _template(name: str) -> ChatTemplate:
    source = (realmodels.SHARED / "fixtures" / "chat-templates" / name).read_text(encoding="utf-8")
    # Gemma 3's vocabulary: BOS '<bos>' is added by the tokenizer, so llama.cpp drops it from the text.
    return ChatTemplate(source, "<bos>", "<eos>", add_bos=True, add_eos=False, now=REFERENCE_DATE)


@pytest.mark.parametrize("record", RECORDS, ids=[f"{r['template']}#{r['case']}" for r in RECORDS])
def test_renders_like_llama_cpp(shared, record):
    request = record["request"]
    template = _template(record["template"])
    if "prompt" not in record:
        pytest.fail(f"record without a prompt (an error record?): {sorted(record)}")
    assert template.render(request["messages"], add_generation_prompt=request.get("add_generation_prompt", True)) == record["prompt"]


def test_reference_is_present(shared):
    assert len(RECORDS) > 0
