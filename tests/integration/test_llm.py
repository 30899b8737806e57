"""Text generation through Serve: the official ``openai`` client on ``/v1/chat/completions``
(stream and not; JSON schemas and tool calls), the three LLM pipelines end to end with their
tokens streamed, and a client that leaves (mid-stream, or waiting for a whole answer)
stopping the replica's generation."""

from __future__ import annotations

import base64
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes import png
from tests.sse import stream_events

pytestmark = pytest.mark.serve

ASK = [{"role": "user", "content": "what is in this image?"}]


def llm_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("llm", app_name="fusion").stats.remote().result()


def sse_events(gateway_url: str, pipeline: str, inputs: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", f"{gateway_url}/v1/pipelines/{pipeline}?stream=true",
                      json={"inputs": inputs}, timeout=120) as r:
        assert r.status_code == 200
        return stream_events(r)


def test_chat_completions_with_the_openai_client(oai):
    whole = oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                        max_tokens=12)
    assert whole.choices[0].message.content and whole.usage.completion_tokens == 12
    chunks = list(oai.chat.completions.create(model="llm", messages=ASK, temperature=0,
                                              max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    sampled = oai.chat.completions.create(model="llm", messages=ASK, temperature=1.0, seed=3,
                                          max_tokens=12, n=2)
    assert len({c.message.content for c in sampled.choices}) == 2
    done = oai.completions.create(model="llm", prompt="the quick brown", max_tokens=5,
                                  temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens == 5


def test_image_parts_go_through_the_captioner_and_ocr(oai):
    url = "data:image/png;base64," + base64.b64encode(png((200, 30, 30), 48)).decode()
    r = oai.chat.completions.create(model="llm", temperature=0, max_tokens=6, messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}])
    plain = oai.chat.completions.create(model="llm", temperature=0, max_tokens=6,
                                        messages=[{"role": "user", "content": "what is this?"}])
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 5


def test_bad_input_is_a_4xx_naming_the_param(gateway_url):
    r = httpx.post(f"{gateway_url}/v1/chat/completions", timeout=60, json={
        "model": "llm", "messages": [{"role": "user", "content": "hi " * 600}],
        "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"  # OpenAI's 400
    r = httpx.post(f"{gateway_url}/v1/chat/completions", timeout=60, json={
        "model": "llm", "messages": ASK, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_ask_image_streams_tokens_after_the_steps(gateway_url):
    image = base64.b64encode(png((20, 40, 200), 48)).decode()
    events = sse_events(gateway_url, "ask_image", {"image": image, "question": "what is it?",
                                                   "max_tokens": 10, "temperature": 0.5})
    kinds = [k for k, _ in events]
    first = kinds.index("token")
    assert {d["step"] for k, d in events[:first] if k == "step"} == {"caption", "read",
                                                                     "prompt"}
    result = events[-1][1]
    assert kinds[-1] == "result"
    text = "".join(d["text"] for k, d in events if k == "token")
    assert text == result["outputs"]["answer"] and text
    assert "not cached" in result["steps"]["answer"]["uncached"]


def test_ask_audio_and_describe_then_draw_end_to_end(http):
    speech = http.post("/v1/models/tts/speak", json={"inputs": {
        "text": "The meeting is in the garden."}}).json()["outputs"]["audio"]
    r = http.post("/v1/pipelines/ask_audio", json={"inputs": {
        "audio": speech, "question": "where is the meeting?", "max_tokens": 8}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert "garden" in out["transcript"].lower() and out["answer"]
    r = http.post("/v1/pipelines/describe_then_draw", json={"inputs": {
        "prompt": "a red boat", "max_tokens": 8, "steps": 2}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["description"] and base64.b64decode(out["image"])[:4] == b"\x89PNG"


def test_client_disconnect_stops_generation(gateway_url):
    before = llm_stats()["cancelled"]
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", timeout=60, json={
            "model": "llm", "messages": ASK, "max_tokens": 480, "temperature": 0.9,
            "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk came: generation is under way; now leave
    deadline = time.monotonic() + 30
    while llm_stats()["cancelled"] == before:
        assert time.monotonic() < deadline, "the replica never saw the client leave"
        time.sleep(0.2)
    assert llm_stats()["last_cancelled_tokens"] < 480


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}


def test_json_schema_and_a_named_tool_through_serve(oai):
    import jsonschema

    r = oai.chat.completions.create(
        model="llm", messages=ASK, temperature=0, max_tokens=100,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": PERSON}}
    r = oai.chat.completions.create(model="llm", messages=ASK, temperature=0, max_tokens=100,
                                    tools=[tool], tool_choice={"type": "function",
                                                               "function": {"name": "lookup"}})
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "lookup" and r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), PERSON)


def test_a_client_that_leaves_a_unary_chat_stops_its_generation(gateway_url):
    before = llm_stats()["cancelled"]
    body = json.dumps({"model": "llm", "messages": ASK, "max_tokens": 480,
                       "temperature": 0.9}).encode()
    url = urlsplit(gateway_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 30
        while not llm_stats()["running"]:  # the replica is generating this answer
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.05)
    # the connection is closed with no answer read
    deadline = time.monotonic() + 30
    while llm_stats()["cancelled"] == before:
        assert time.monotonic() < deadline, "the replica never saw the client leave"
        time.sleep(0.2)
    assert llm_stats()["last_cancelled_tokens"] < 480
