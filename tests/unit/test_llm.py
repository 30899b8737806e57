"""The ``llm`` family in-process: the tiny Llama + BPE tokenizer built offline, saved, and
loaded back through ``AutoModelForCausalLM``; batching, streaming, stop strings, seeds,
cancellation and every bad input named by its field."""

from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.chat import chat_messages  # noqa: E402
from fusion.errors import BadInput  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process

QUESTION = [{"role": "system", "content": "you are a helpful assistant"},
            {"role": "user", "content": "what is in this image?"}]


def call(llm, task: str, **inputs) -> dict:
    return llm.run(task, [llm.prepare(task, inputs)])[0]


def test_loads_through_the_hub_layout_with_a_chat_template(llm):
    info = llm.info()
    assert info["family"] == "llm" and info["tasks"] == ["chat", "complete"]
    assert info["fingerprint"].startswith("tiny:llm#") and info["context"] == 512
    assert info["chat_template"] is True
    text = llm.render(QUESTION)
    assert text == ("<|im_start|>system\nyou are a helpful assistant<|im_end|>\n"
                    "<|im_start|>user\nwhat is in this image?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_chat_answers_with_usage_from_the_tokenizer(llm):
    out = call(llm, "chat", messages=QUESTION, temperature=0, max_tokens=12)
    assert set(out) == {"text", "finish_reason", "usage", "json", "tool_calls"}
    assert out["json"] is None and out["tool_calls"] is None  # no response_format, tools
    assert out["text"].strip() and out["finish_reason"] == "length"
    prompt = len(llm.tokenizer(llm.render(QUESTION), add_special_tokens=False)["input_ids"])
    assert out["usage"] == {"prompt_tokens": prompt, "completion_tokens": 12,
                            "total_tokens": prompt + 12}
    # prompt (+ system) is the one-turn form pipelines use: the same conversation
    same = call(llm, "chat", prompt=QUESTION[1]["content"], system=QUESTION[0]["content"],
                temperature=0, max_tokens=12)
    assert same == out
    other = call(llm, "chat", prompt="describe the recording", temperature=0, max_tokens=12)
    assert other["text"] != out["text"]


def test_greedy_batch_matches_single_calls(llm):
    prompts = ["hello world", "what is in this image?", "draw a small house by the sea"]
    items = [llm.prepare("complete", {"prompt": p, "temperature": 0, "max_tokens": 6 + i})
             for i, p in enumerate(prompts)]
    batched = llm.run("complete", items)
    assert [o["usage"]["completion_tokens"] for o in batched] == [6, 7, 8]
    assert batched == [llm.run("complete", [it])[0] for it in items]


def test_seed_makes_sampling_reproducible(llm):
    a = call(llm, "complete", prompt="the weather", temperature=1.0, seed=7, max_tokens=16)
    b = call(llm, "complete", prompt="the weather", temperature=1.0, seed=7, max_tokens=16)
    c = call(llm, "complete", prompt="the weather", temperature=1.0, seed=8, max_tokens=16)
    assert a == b and a["text"] != c["text"]


def test_stream_deltas_add_up_to_the_unary_answer(llm):
    item = llm.prepare("chat", {"messages": QUESTION, "temperature": 0, "max_tokens": 20})
    deltas: list[str] = []
    streamed = llm.generate([item], deltas.append)[0]
    assert len(deltas) > 3 and "".join(deltas) == streamed["text"]
    assert streamed == llm.run("chat", [item])[0]


def test_stop_string_cuts_the_answer_and_the_stream(llm):
    full = call(llm, "chat", messages=QUESTION, temperature=0, max_tokens=20)["text"]
    stop = full[6:9]
    assert stop.strip() and full.find(stop) == 6
    out = call(llm, "chat", messages=QUESTION, temperature=0, max_tokens=20, stop=[stop])
    assert out["text"] == full[:6] and out["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] < 20
    deltas: list[str] = []
    item = llm.prepare("chat", {"messages": QUESTION, "temperature": 0, "max_tokens": 20,
                                "stop": [stop]})
    assert llm.generate([item], deltas.append)[0] == out
    assert "".join(deltas) == full[:6]  # the stop string's start was held back, never sent


def test_cancel_stops_generation_at_the_next_token(llm):
    cancel = threading.Event()
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            cancel.set()  # what the replica does when its caller goes away

    item = llm.prepare("complete", {"prompt": "hello", "temperature": 0, "max_tokens": 400})
    out = llm.generate([item], on_text, cancel)[0]
    assert out["finish_reason"] == "cancelled"
    assert out["usage"]["completion_tokens"] <= 5


def test_max_tokens_is_clamped_to_the_context_left(llm):
    long_prompt = "one two three four five " * 90
    n = len(llm.tokenizer(long_prompt)["input_ids"])
    assert 400 < n < 512
    out = call(llm, "complete", prompt=long_prompt, temperature=0, max_tokens=200)
    assert out["usage"]["completion_tokens"] <= 512 - n and out["finish_reason"] == "length"


@pytest.mark.parametrize(("task", "inputs", "field"), [
    ("chat", {}, "messages"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": "hi"}, "messages"),
    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}, "x"]}, "messages[1]"),
    ("chat", {"messages": [{"role": "user", "content": "  "}]}, "messages"),
    ("chat", {"messages": QUESTION, "prompt": "hi"}, "prompt"),
    ("chat", {"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ("chat", {"messages": QUESTION, "max_tokens": 513}, "max_tokens"),
    ("chat", {"messages": [{"role": "user", "content": "hello " * 600}]}, "messages"),
    ("chat", {"messages": QUESTION, "temperature": 2.5}, "temperature"),
    ("chat", {"messages": QUESTION, "top_p": 0}, "top_p"),
    ("chat", {"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("chat", {"messages": QUESTION, "stop": ["a", ""]}, "stop[1]"),
    ("chat", {"messages": QUESTION, "seed": 1 << 64}, "seed"),
    ("complete", {"prompt": ""}, "prompt"),
    ("complete", {"prompt": "hello " * 600}, "prompt"),
    ("complete", {"prompt": "hi", "max_tokens": -3}, "max_tokens"),
])
def test_bad_input_names_the_field(llm, task, inputs, field):
    with pytest.raises(BadInput) as info:
        llm.prepare(task, inputs)
    assert info.value.field == field, info.value.message


def test_content_parts_and_developer_role():
    msgs = chat_messages({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b"}]}]})
    assert msgs == [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "a\nb"}]
    with pytest.raises(BadInput) as info:
        chat_messages({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    assert info.value.field == "messages[0].content[0]"
