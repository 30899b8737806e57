"""Structured outputs, tool calls, the request-field audit and disconnects, with the official
``openai`` client over the router (httpx's ASGI transport) and the real tiny LLM behind it.

The tiny model's weights are random: whatever it would say, constrained decoding makes the
answer parse and validate against the schema (or end with ``finish_reason: length``).
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import jsonschema
import openai
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.chat import chat_messages  # noqa: E402
from fusion.http.app import create_api  # noqa: E402
from fusion.http.openai.chat_body import _HARMLESS, FIELDS  # noqa: E402
from tests.llm_inprocess import llm_gateway  # noqa: E402

ASK = [{"role": "user", "content": "describe the photo in one sentence."}]
PERSON = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "maxItems": 3,
                                  "items": {"enum": ["cat", "dog", "sea"]}}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "maxLength": 10},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "forecast",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


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


async def test_json_schema_answers_validate_on_20_seeds(oai):
    for seed in range(20):
        r = await oai.chat.completions.create(model="llm", messages=ASK, seed=seed,
                                              temperature=1.0, max_tokens=120,
                                              response_format=FORMAT)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (seed, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), PERSON)


async def test_json_object_mode_answers_an_object(oai):
    r = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                          max_tokens=200,
                                          response_format={"type": "json_object"})
    choice = r.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # cut by max_tokens: as OpenAI, the text is what came, and it starts an object
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_a_batch_mixes_constrained_and_free_rows(llm):
    items = [llm.prepare("chat", {"messages": ASK, "temperature": 0, "max_tokens": 60,
                                  "response_format": FORMAT if i % 2 else None})
             for i in range(4)]
    batch = llm.run("chat", items)
    for item, out in zip(items, batch, strict=True):
        assert out == llm.run("chat", [item])[0]  # the same alone as beside the others
        if item.format is not None:
            jsonschema.validate(out["json"], PERSON)
    assert batch[0]["json"] is None and batch[0]["text"] != batch[1]["text"]


async def test_streamed_and_unary_answers_are_equal_for_a_seed(oai):
    kw = {"model": "llm", "messages": ASK, "seed": 7, "temperature": 1.0, "max_tokens": 120,
          "response_format": FORMAT}
    whole = await oai.chat.completions.create(**kw)
    stream = await oai.chat.completions.create(**kw, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


async def test_named_tool_choice_calls_it_with_valid_arguments(oai):
    for seed in range(5):
        r = await oai.chat.completions.create(model="llm", messages=ASK, tools=TOOLS,
                                              tool_choice=NAMED, seed=seed, temperature=1.0,
                                              max_tokens=120)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


async def test_required_without_parallel_calls_one_known_function(oai):
    r = await oai.chat.completions.create(model="llm", messages=ASK, tools=TOOLS,
                                          tool_choice="required", parallel_tool_calls=False,
                                          temperature=0, max_tokens=120)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "noop")
    assert isinstance(json.loads(call.function.arguments), dict)


async def test_streamed_tool_calls_arrive_as_deltas(oai):
    kw = {"model": "llm", "messages": ASK, "tools": TOOLS, "tool_choice": NAMED, "seed": 3,
          "temperature": 1.0, "max_tokens": 120}
    whole = (await oai.chat.completions.create(**kw)).choices[0].message.tool_calls[0]
    stream = await oai.chat.completions.create(**kw, stream=True)
    chunks = [c async for c in stream if c.choices]
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_results_go_back_into_the_conversation(oai, llm):
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = await oai.chat.completions.create(model="llm", messages=history, tools=TOOLS,
                                          temperature=0, max_tokens=8)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")
    prompt = llm.render(chat_messages({"messages": history}), None)
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert '"arguments": {"city": "Oslo", "days": 2}' in prompt


async def test_tool_choice_none_leaves_tools_out(oai, llm):
    r = await oai.chat.completions.create(model="llm", messages=ASK, tools=TOOLS,
                                          tool_choice="none", temperature=0, max_tokens=10)
    plain = await oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                              max_tokens=10)
    assert r.choices[0].message.content == plain.choices[0].message.content
    assert not r.choices[0].message.tool_calls


async def test_a_template_without_tools_is_a_400_naming_tools(http, llm, monkeypatch):
    monkeypatch.setattr(llm, "tool_template", False)
    r = await http.post("/v1/chat/completions",
                        json={"model": "llm", "messages": ASK, "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


async def test_completions_take_response_format(oai):
    r = await oai.completions.create(model="llm", prompt="the quick brown fox", temperature=0,
                                     max_tokens=120, extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$ref": "#/$defs/missing"}}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"stream": True, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "strin"}}}}, "response_format"),
])
async def test_bad_formats_and_tools_are_400s_naming_the_field(http, extra, param):
    r = await http.post("/v1/chat/completions",
                        json={"model": "llm", "messages": ASK, "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


REFUSED = [name for name, (status, _) in FIELDS.items() if status == "refused"]
ASKING = {"store": True, "service_tier": "flex", "frequency_penalty": 0.5,
          "presence_penalty": 0.5, "logit_bias": {"5": 10}, "logprobs": True,
          "top_logprobs": 2, "functions": [{"name": "f"}], "function_call": "auto",
          "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
          "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low",
          "verbosity": "low", "web_search_options": {}, "echo": True, "suffix": "x",
          "best_of": 2}


@pytest.mark.parametrize("name", REFUSED)
async def test_every_refused_field_is_a_400_naming_it(http, name):
    assert name in ASKING  # the audit and this test list the same fields
    path = "/v1/completions" if name in ("echo", "suffix", "best_of") else \
        "/v1/chat/completions"
    base = {"prompt": "hi"} if path == "/v1/completions" else {"messages": ASK}
    r = await http.post(path, json={"model": "llm", "max_tokens": 2, **base,
                                    name: ASKING[name]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == name
    for harmless in _HARMLESS.get(name, ()):  # values that ask for nothing are accepted
        r = await http.post(path, json={"model": "llm", "max_tokens": 2, **base,
                                        name: harmless})
        assert r.status_code == 200, (name, harmless, r.text)


async def test_a_client_that_leaves_a_unary_chat_stops_its_generation(models, llm):
    app = create_api(lambda: llm_gateway(models))
    body = json.dumps({"model": "llm", "messages": [{"role": "user", "content": "one two"}],
                       "temperature": 0, "max_tokens": 400}).encode()
    gone = asyncio.Event()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            return incoming.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"host", b"gw"),
                         (b"cache-control", b"no-store")],
             "client": ("127.0.0.1", 1), "server": ("gw", 80)}
    before = llm.counts["cancelled"]
    models.generating.clear()
    models.finished.clear()
    job = asyncio.create_task(app(scope, receive, send))
    await asyncio.to_thread(models.generating.wait)
    gone.set()  # the client disconnects while its answer generates
    await job
    assert sent[0]["status"] == 499
    await asyncio.to_thread(models.finished.wait)
    assert llm.counts["cancelled"] == before + 1
    assert llm.counts["last_cancelled_tokens"] < 400  # it stopped, not ran to max_tokens


def test_a_cancelled_row_stops_and_its_batch_mates_finish(llm):
    items = [llm.prepare("chat", {"messages": ASK, "temperature": 0, "max_tokens": 30})
             for _ in range(2)]
    alone = llm.run("chat", [items[1]])[0]
    items[0].cancel.set()  # its caller went away before the first step
    gone, kept = llm.run("chat", items)
    assert gone["finish_reason"] == "cancelled" and gone["usage"]["completion_tokens"] <= 1
    assert kept == alone
    items[1].cancel.set()  # every row gone: nothing generates at all
    assert all(r["usage"]["completion_tokens"] == 0 for r in llm.run("chat", items))


def _json_pipeline(step_extra: dict) -> dict:
    return {"name": "profile", "inputs": {"q": "text"},
            "steps": {"answer": {"model": "llm", "task": "chat",
                                 "with": {"prompt": "$inputs.q", "max_tokens": 120,
                                          "temperature": 0}, **step_extra}},
            "outputs": {"profile": "$steps.answer.json", "raw": "$steps.answer.text"}}


async def test_a_pipeline_step_with_response_format_outputs_json(models):
    from fusion.cache import StepCache
    from fusion.config import CacheConfig
    from fusion.core.gateway import Gateway
    from tests.llm_inprocess import llm_config

    config = llm_config(pipelines=[_json_pipeline({"response_format": FORMAT})])
    gw = Gateway(config, models, StepCache.from_config(CacheConfig(redis_url=None)))
    spec = gw.pipelines["profile"]
    assert spec.output_types["profile"] == "json"
    result = await gw.run_pipeline("profile", {"q": "who is in the photo?"})
    jsonschema.validate(result.outputs["profile"], PERSON)
    assert json.loads(result.outputs["raw"]) == result.outputs["profile"]


@pytest.mark.parametrize("extra, problem", [
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": FORMAT, "with": {"prompt": "$inputs.q", "response_format": FORMAT}},
     "once"),
])
def test_a_bad_step_response_format_fails_at_start(extra, problem):
    from fusion.core.gateway import served_tasks
    from fusion.errors import SpecError
    from fusion.pipeline.spec import load_spec
    from tests.llm_inprocess import llm_config

    with pytest.raises(SpecError) as info:
        load_spec(_json_pipeline(extra), "test.yaml", served_tasks(llm_config()))
    assert "step 'answer'" in str(info.value) and problem in str(info.value)


def test_the_docs_list_every_audited_field_as_the_code_treats_it():
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs/how-to/structured-outputs.md"
    rows = {}
    for line in page.read_text().split("## Every request field", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert rows == {name: status for name, (status, _) in FIELDS.items()}


async def test_auto_tools_stream_the_same_text_as_unary(oai):
    kw = {"model": "llm", "messages": ASK, "tools": TOOLS, "temperature": 0,
          "max_tokens": 24}
    whole = (await oai.chat.completions.create(**kw)).choices[0]
    stream = await oai.chat.completions.create(**kw, stream=True)
    chunks = [c async for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == (whole.message.content or "")
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
