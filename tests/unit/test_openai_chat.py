"""``/v1/chat/completions`` and ``/v1/completions`` in-process, driven by the official
``openai`` client (over httpx's ASGI transport), with the real tiny LLM behind the router."""

from __future__ import annotations

import base64
import json
import os

import httpx
import openai
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.http.app import create_api  # noqa: E402
from tests.fakes import png  # noqa: E402
from tests.llm_inprocess import llm_gateway  # noqa: E402
from tests.sse import decode  # noqa: E402

ASK = [{"role": "user", "content": "what is in this image?"}]


@pytest.fixture
async def http(models):
    gw = llm_gateway(models)
    transport = httpx.ASGITransport(app=create_api(lambda: gw))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


@pytest.fixture
async def oai(http):
    async with openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", max_retries=0,
                                  http_client=http) as client:
        yield client


async def test_chat_completion_shape_and_usage(oai, llm):
    r = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                          max_tokens=10)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "llm"
    [choice] = r.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and choice.index == 0
    prompt = len(llm.tokenizer(llm.render(ASK), add_special_tokens=False)["input_ids"])
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, 10)
    assert r.usage.total_tokens == prompt + 10


async def test_stream_chunks_add_up_to_the_same_answer(oai, models):
    whole = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                              max_tokens=16)
    stream = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                               max_tokens=16, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    # greedy: the second request was the cache's, replayed as a stream of several chunks
    assert models.calls["llm/chat"] == 1 and len(chunks) > 4


async def test_stream_ends_with_done(http):
    r = await http.post("/v1/chat/completions", json={
        "model": "llm", "messages": ASK, "max_tokens": 5, "temperature": 0.7, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = decode(r.text)
    assert all(e.event == "message" and e.id is None for e in events)  # data lines only
    assert events[-1].data == "[DONE]"
    last = json.loads(events[-2].data)
    assert last["choices"][0]["finish_reason"] == "length"


async def test_n_choices_seeded_and_greedy(oai, models):
    seeded = await oai.chat.completions.create(model="llm", messages=ASK, n=3, seed=11,
                                               temperature=1.0, max_tokens=12)
    texts = [c.message.content for c in seeded.choices]
    assert [c.index for c in seeded.choices] == [0, 1, 2] and len(set(texts)) == 3
    again = await oai.chat.completions.create(model="llm", messages=ASK, n=3, seed=11,
                                              temperature=1.0, max_tokens=12)
    assert [c.message.content for c in again.choices] == texts  # seeded: cached
    assert models.calls["llm/chat"] == 3
    # usage sums the choices (12 each, fewer for a choice that sampled end-of-text) and a
    # cached answer reports the usage it was computed with
    full = sum(12 if c.finish_reason == "length" else 0 for c in seeded.choices)
    assert full <= again.usage.completion_tokens <= 36
    assert again.usage == seeded.usage and again.usage.prompt_tokens < 36
    greedy = await oai.chat.completions.create(model="llm", messages=ASK, n=2, temperature=0,
                                               max_tokens=8)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert models.calls["llm/chat"] == 4  # the two greedy choices: one computation


async def test_stop_strings(oai):
    full = (await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                              max_tokens=20)).choices[0].message.content
    r = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                          max_tokens=20, stop=full[4:7])
    assert r.choices[0].message.content == full[:4] and r.choices[0].finish_reason == "stop"


async def test_completions_string_list_and_stream(oai):
    one = await oai.completions.create(model="llm", prompt="the quick brown", max_tokens=6,
                                       temperature=0)
    assert one.object == "text_completion" and one.choices[0].text
    both = await oai.completions.create(model="llm", prompt=["the quick brown", "hello"],
                                        max_tokens=6, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == one.choices[0].text
    stream = await oai.completions.create(model="llm", prompt="the quick brown",
                                          max_tokens=6, temperature=0, stream=True)
    text = "".join([c.choices[0].text async for c in stream])
    assert text == one.choices[0].text


async def test_image_parts_are_read_by_captioner_and_ocr(oai, models):
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    plain = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                              max_tokens=4)
    with_image = await oai.chat.completions.create(model="llm", temperature=0, max_tokens=4,
                                                   messages=[{"role": "user", "content": [
                                                       {"type": "text", "text": ASK[0]["content"]},
                                                       {"type": "image_url",
                                                        "image_url": {"url": url}}]}])
    assert models.calls["captioner/caption"] == 1 and models.calls["ocr/ocr"] == 1
    assert with_image.usage.prompt_tokens > plain.usage.prompt_tokens + 5


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": ASK}, 400, "model"),
    ({"model": "ghost", "messages": ASK}, 404, "model"),
    ({"model": "text", "messages": ASK}, 404, "model"),  # serves no chat
    ({"model": "llm", "messages": []}, 400, "messages"),
    ({"model": "llm", "messages": [{"role": "user", "content": "hi"},
                                   {"role": "tool", "content": "x"}]}, 400,
     "messages[1].tool_call_id"),
    ({"model": "llm", "messages": [{"role": "robot", "content": "hi"}]}, 400,
     "messages[0].role"),
    ({"model": "llm", "messages": ASK, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "llm", "messages": ASK, "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "llm", "messages": ASK, "max_tokens": 100000, "stream": True}, 400,
     "max_tokens"),  # a stream answers its status once the replica took the prompt
    ({"model": "llm", "messages": [{"role": "user", "content": "hi " * 600}],
      "stream": True}, 400, "messages"),
    ({"model": "llm", "messages": ASK, "n": 9}, 400, "n"),
    ({"model": "llm", "messages": ASK, "temperature": "hot"}, 400, "temperature"),
    ({"model": "llm", "messages": ASK, "stop": [1]}, 400, "stop"),
    ({"model": "llm", "messages": ASK, "tools": [{"type": "function"}]}, 400, "tools[0]"),
    ({"model": "llm", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     400, "messages[0].content[0].image_url.url"),
])
async def test_bad_requests_are_openai_errors_naming_the_param(http, body, status, param):
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    assert err["type"] == "invalid_request_error"


async def test_client_sees_typed_errors(oai):
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model="llm", messages=[{"role": "robot",
                                                                  "content": "hi"}])
    assert info.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.NotFoundError) as info:
        await oai.completions.create(model="nope", prompt="hi")
    assert info.value.code == "model_not_found"


async def test_malformed_json_is_a_400(http):
    r = await http.post("/v1/chat/completions", content=b"{nope",
                        headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
