"""SSE parsing by hand, and ``stream()`` turning events into typed objects (sync and async)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import LABELS, PNG, b64, error_body, pipeline_result, run_async, sse

from fusion_client import (
    BadRequest,
    ConnectionFailed,
    Overloaded,
    ProgressEvent,
    ResultEvent,
    ServerError,
    StartEvent,
    StepEvent,
    Timeout,
)
from fusion_client.sse import ServerSentEvent, SSEDecoder

PATH = "/v1/pipelines/text_to_image"
RESULT = pipeline_result({"image": b64(PNG), "caption": None},
                         {"image": "image", "caption": "text"}, rid="rid-s")
STREAM = sse(("start", {"step": "generate", "model": "diffusion", "task": "generate"}),
             ("progress", {"step": "generate", "progress": 1, "total": 2}),
             ("progress", {"step": "generate", "progress": 2, "total": 2}),
             ("step", {"step": "generate", "ms": 40.0, "cached": False, "coalesced": False,
                       "skipped": False}),
             ("result", RESULT))


def sse_response(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=body,
                          headers={"Content-Type": "text/event-stream", **headers})


# ---- the decoder -------------------------------------------------------------------------

def decode_all(text: str, chunk: int) -> list[ServerSentEvent]:
    d = SSEDecoder()
    out = []
    for i in range(0, len(text), chunk):
        out += d.feed(text[i:i + chunk])
    return out + d.close()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_decoder_any_chunking_any_newline(newline, chunk):
    text = newline.join([
        ": keep-alive", "", "event: step", 'data: {"a": 1}', "", "data: first",
        "data:second", "id: 7", "retry: 1500", "", "event: result", "data: {}", "", ""])
    events = decode_all(text, chunk)
    assert events == [
        ServerSentEvent("step", '{"a": 1}'),
        ServerSentEvent("message", "first\nsecond", id="7", retry=1500),
        ServerSentEvent("result", "{}", id="7"),
    ]


def test_decoder_drops_events_without_data_and_ignores_unknown_fields():
    events = decode_all("event: ping\n\nfoo: bar\ndata: x\n\n", 4)
    assert events == [ServerSentEvent("message", "x")]


def test_decoder_dispatches_a_last_event_missing_its_blank_line():
    assert decode_all("event: result\ndata: {}", 5) == [ServerSentEvent("result", "{}")]


def test_decoder_keeps_colons_and_spaces_in_data():
    assert decode_all('data:  two spaces: yes\n\n', 3) == [
        ServerSentEvent("message", " two spaces: yes")]


def test_decoder_long_line_in_many_chunks():
    payload = "x" * 100_000
    events = decode_all(f"event: result\ndata: {payload}\n\n", 997)
    assert events == [ServerSentEvent("result", payload)]


# ---- stream() ----------------------------------------------------------------------------

def test_stream_yields_typed_events(gateway, client):
    gateway.route("POST", PATH, sse_response(STREAM))
    events = list(client.stream("text_to_image", prompt="a red square", seed=1))
    assert [type(e) for e in events] == [StartEvent, ProgressEvent, ProgressEvent, StepEvent,
                                         ResultEvent]
    assert (events[0].step, events[0].model, events[0].task) == \
        ("generate", "diffusion", "generate")
    assert events[1].fraction == 0.5 and events[2].fraction == 1.0
    assert events[3].step == "generate" and events[3].ms == 40.0
    result = events[4].result
    assert result.request_id == "rid-s" and result.outputs["caption"] is None
    request = gateway.requests[-1]
    assert request.url.params["stream"] == "true"
    assert request.headers["accept"] == "text/event-stream"
    assert json.loads(request.content) == {"inputs": {"prompt": "a red square", "seed": 1}}


def test_stream_decodes_image_outputs(gateway, client):
    pytest.importorskip("PIL")
    gateway.route("POST", PATH, sse_response(STREAM))
    *_, last = client.stream("text_to_image", prompt="p")
    assert last.result.outputs["image"].size == (2, 1)


def test_stream_error_event_raises_typed_error_after_earlier_events(gateway, client):
    body = sse(("step", {"step": "caption", "ms": 1}),
               ("error", error_body("bad_input", "image is not a decodable image",
                                    "inputs.image", rid="rid-e")))
    gateway.route("POST", PATH, sse_response(body))
    seen = []
    with pytest.raises(BadRequest) as info:
        for event in client.stream("text_to_image", prompt="p"):
            seen.append(event)
    assert [e.type for e in seen] == ["step"]
    err = info.value
    assert (err.status, err.code, err.field, err.request_id) == \
        (422, "bad_input", "inputs.image", "rid-e")


def test_stream_timeout_error_event(gateway, client):
    gateway.route("POST", PATH, sse_response(sse(("error", error_body("step_timeout", "t")))))
    with pytest.raises(Timeout):
        list(client.stream("text_to_image", prompt="p"))


def test_start_event_of_a_built_in_step_and_with_fields_added_later(gateway, client):
    """``start`` has no model for ``fuse``/``template`` steps; fields a newer gateway adds
    are kept, not refused. (An SDK older than ``start`` ignores it: see the next test.)"""
    body = sse(("start", {"step": "fused", "model": None, "task": "fuse", "attempt": 2}),
               ("step", {"step": "fused", "ms": 0.1}), ("result", RESULT))
    gateway.route("POST", PATH, sse_response(body))
    start, step, _ = client.stream("text_to_image", prompt="p")
    assert isinstance(start, StartEvent) and start.type == "start"
    assert (start.step, start.model, start.task) == ("fused", None, "fuse")
    assert start.model_extra == {"attempt": 2} and isinstance(step, StepEvent)


def test_stream_ignores_unknown_events_and_stops_at_result(gateway, client):
    body = sse(("hello", {"x": 1}), ("result", RESULT), ("step", {"step": "late"}))
    gateway.route("POST", PATH, sse_response(body))
    events = list(client.stream("text_to_image", prompt="p"))
    assert [e.type for e in events] == ["result"]


def test_stream_without_result_is_server_error(gateway, client):
    gateway.route("POST", PATH, sse_response(sse(("step", {"step": "a"})),
                                             **{"X-Request-Id": "rq"}))
    with pytest.raises(ServerError, match="before a result") as info:
        list(client.stream("text_to_image", prompt="p"))
    assert info.value.request_id == "rq"


def test_stream_malformed_event_is_server_error(gateway, client):
    gateway.route("POST", PATH, sse_response(b"event: step\ndata: {not json\n\n"))
    with pytest.raises(ServerError, match="malformed"):
        list(client.stream("text_to_image", prompt="p"))


def test_stream_http_error_before_events(gateway, client):
    gateway.route("POST", PATH, httpx.Response(
        404, json=error_body("not_found", "unknown pipeline", "pipeline")))
    with pytest.raises(Exception) as info:
        list(client.stream("text_to_image", prompt="p"))
    assert info.value.status == 404 and info.value.field == "pipeline"


def test_stream_json_answer_becomes_one_result_event(gateway, client):
    gateway.route("POST", PATH, httpx.Response(200, json=RESULT))
    events = list(client.stream("text_to_image", prompt="p"))
    assert len(events) == 1 and isinstance(events[0], ResultEvent)


def test_stream_retried_on_503_and_connection_errors_before_it_starts(gateway, client, sleeps):
    gateway.queue("POST", PATH, httpx.Response(503, json=error_body("overloaded", "busy")),
                  httpx.ConnectError("refused"))
    gateway.route("POST", PATH, sse_response(STREAM))
    events = list(client.stream("text_to_image", prompt="p"))
    assert len(events) == 5 and len(sleeps) == 2


def test_stream_gives_up_on_503(gateway, client, sleeps):
    gateway.route("POST", PATH, httpx.Response(503, json=error_body("overloaded", "busy")))
    with pytest.raises(Overloaded):
        list(client.stream("text_to_image", prompt="p"))
    assert len(sleeps) == 3


class _BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Sends the first events, then the connection drops."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self):
        yield self.first
        raise httpx.ReadError("connection reset")

    async def __aiter__(self):
        yield self.first
        raise httpx.ReadError("connection reset")


def test_stream_is_not_retried_once_events_arrived(gateway, client, sleeps):
    first = sse(("step", {"step": "generate", "ms": 1}))
    gateway.route("POST", PATH, lambda r: httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=_BrokenStream(first)))
    seen = []
    with pytest.raises(ConnectionFailed):
        for event in client.stream("text_to_image", prompt="p"):
            seen.append(event)
    assert len(seen) == 1 and sleeps == []
    assert gateway.count("POST", PATH) == 1


def test_async_stream(gateway, make_async, sleeps):
    gateway.queue("POST", PATH, httpx.Response(503))
    gateway.route("POST", PATH, sse_response(STREAM))

    async def go():
        async with make_async(decode_images=False) as client:
            return [e async for e in client.stream("text_to_image", prompt="p")]

    events = run_async(go())
    assert [e.type for e in events] == ["start", "progress", "progress", "step", "result"]
    assert events[-1].result.outputs["image"] == PNG
    assert len(sleeps) == 1


def test_async_stream_error_event(gateway, make_async):
    gateway.route("POST", PATH, sse_response(sse(("error", error_body("overloaded", "full")))))

    async def go():
        async with make_async() as client:
            async for _ in client.stream("text_to_image", prompt="p"):
                pass

    with pytest.raises(Overloaded, match="full"):
        run_async(go())


def test_async_stream_broken_midway(gateway, make_async, sleeps):
    gateway.route("POST", PATH, lambda r: httpx.Response(
        200, headers={"Content-Type": "text/event-stream"},
        stream=_BrokenStream(sse(("step", {"step": "generate"})))))

    async def go():
        async with make_async() as client:
            return [e async for e in client.stream("text_to_image", prompt="p")]

    with pytest.raises(ConnectionFailed):
        run_async(go())
    assert sleeps == []


def test_stream_labels_result(gateway, client):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", sse_response(sse(
        ("result", pipeline_result({"caption": "c", "labels": LABELS},
                                   {"caption": "text", "labels": "labels"})))))
    (event,) = client.stream("caption_then_classify", image=PNG, labels=["cat", "dog"])
    assert event.result.outputs["labels"][0]["label"] == "cat"
