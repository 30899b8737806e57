"""Failure paths over HTTP, in-process (httpx over ASGI) with fake models: refusals (503 with
Retry-After), deadlines (504 naming the step, plain and in SSE), model crashes (502), client
disconnects cancelling model calls, body limits on every route, invalid Unicode, and a real
cache cleared by an admin. Every wait is on an event, never on a wall-clock margin."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from fusion.cache import MemoryBackend, StepCache
from fusion.core.gateway import Gateway, current_gateway, install, installed
from fusion.core.keys import hash_key
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config, png
from tests.sse import sse_events


class GatedModels(FakeModels):
    """Fake models whose calls to ``gated`` tasks block until ``release`` is set.

    ``started`` is set when a gated call begins; ``cancelled`` counts gated calls that were
    cancelled while blocked (what a disconnect or a deadline must cause)."""

    def __init__(self, gated: tuple[str, ...] = ("generate",), **kw: Any) -> None:
        super().__init__(**kw)
        self.gated = gated
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.running = 0
        self.cancelled = 0

    async def _gate(self, task: str) -> None:
        if task not in self.gated:
            return
        self.running += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        await self._gate(task)
        return await super().call(model, task, inputs)

    async def stream(self, model: str, task: str, inputs: dict[str, Any]):
        await self._gate(task)
        async for event in super().stream(model, task, inputs):
            yield event


def client_for(gw_or_get, **kw) -> httpx.AsyncClient:
    get = gw_or_get if callable(gw_or_get) else (lambda: gw_or_get)
    transport = httpx.ASGITransport(app=create_api(get), **kw)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30)


NO_STORE = {"Cache-Control": "no-store"}


def t2i(prompt: str = "a fox", **extra: Any) -> dict:
    return {"inputs": {"prompt": prompt, "steps": 2, **extra}}


async def until(predicate, what: str) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded by the test's own timeout)."""
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


# ---- 503: admission ------------------------------------------------------------------------

async def test_over_the_in_flight_limit_is_503_with_retry_after_at_once():
    fake = GatedModels()
    gw = Gateway(fake_config(router={"max_in_flight": 2}), fake)
    async with client_for(gw) as c:
        running = [asyncio.ensure_future(c.post("/v1/pipelines/text_to_image",
                                                json=t2i(f"p{i}"), headers=NO_STORE))
                   for i in range(2)]
        await until(lambda: fake.running == 2, "two runs reach the model")
        # answered while both slots are still busy: nothing waited for them
        r = await c.post("/v1/pipelines/text_to_image", json=t2i("p3"), headers=NO_STORE)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "overloaded" and "limit of 2" in err["message"]
        assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) >= 1
        assert err["retry_after_ms"] == int(r.headers["retry-after-ms"])
        assert err["request_id"] == r.headers["x-request-id"]
        # a stream is refused the same way: a plain 503, not an event stream
        r = await c.post("/v1/pipelines/text_to_image?stream=true", json=t2i("p4"))
        assert r.status_code == 503 and "retry-after" in r.headers
        # and so is an OpenAI route, in OpenAI's body
        r = await c.post("/v1/embeddings", json={"model": "text", "input": "hi"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert r.json()["error"]["code"] == "overloaded" and "retry-after-ms" in r.headers
        fake.release.set()
        assert all(x.status_code == 200 for x in await asyncio.gather(*running))
        assert gw.admission.in_flight == 0 and gw.admission.rejected == 3
        r = await c.post("/v1/pipelines/text_to_image", json=t2i("p5"), headers=NO_STORE)
        assert r.status_code == 200  # slots were given back


async def test_a_refusal_comes_before_the_body_is_read():
    """Under a burst the router refuses without reading or decoding a body: a request whose
    body is not even JSON is answered 503 (its refusal), not 400 (its body)."""
    fake = GatedModels()
    gw = Gateway(fake_config(router={"max_in_flight": 1}), fake)
    async with client_for(gw) as c:
        running = asyncio.ensure_future(c.post("/v1/pipelines/text_to_image", json=t2i(),
                                               headers=NO_STORE))
        await until(lambda: fake.running == 1, "the run reaches the model")
        for path in ("/v1/pipelines/text_to_image", "/v1/models/text/embed"):
            r = await c.post(path, content=b"{not json", headers={
                "content-type": "application/json"})
            assert r.status_code == 503, (path, r.text)
        fake.release.set()
        assert (await running).status_code == 200
        r = await c.post("/v1/models/text/embed", content=b"{not json",
                         headers={"content-type": "application/json"})
        assert r.status_code in (400, 422)  # read, and refused for its body, once there is room


async def test_a_full_model_queue_in_a_step_keeps_its_retry_after():
    from fusion.errors import Overloaded

    busy = Overloaded("model 'diffusion' is at its queue limit", retry_after_s=2.5)
    async with client_for(Gateway(fake_config(), FakeModels(fail={"generate": busy}))) as c:
        r = await c.post("/v1/pipelines/text_to_image", json=t2i(), headers=NO_STORE)
    assert r.status_code == 503 and r.headers["retry-after-ms"] == "2500"
    assert r.headers["retry-after"] == "3" and r.json()["error"]["retry_after_ms"] == 2500
    assert r.json()["error"]["message"].startswith("step 'generate'")


async def test_a_pipelines_own_limit_refuses_it_alone():
    fake = GatedModels()
    cfg = fake_config(router={"max_in_flight": 8,
                              "pipeline_max_in_flight": {"text_to_image": 1}})
    gw = Gateway(cfg, fake)
    async with client_for(gw) as c:
        first = asyncio.ensure_future(c.post("/v1/pipelines/text_to_image", json=t2i()))
        await until(lambda: fake.running == 1, "the first run reaches the model")
        r = await c.post("/v1/pipelines/text_to_image", json=t2i("other"))
        assert r.status_code == 503 and "'text_to_image'" in r.json()["error"]["message"]
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "still served"}})
        assert r.status_code == 200
        fake.release.set()
        assert (await first).status_code == 200


async def test_a_gateway_still_starting_is_503_with_retry_after():
    saved = installed()
    install(None)
    try:
        async with client_for(current_gateway) as c:
            assert (await c.get("/healthz")).status_code == 200
            r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "x"}})
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
            assert "starting" in r.json()["error"]["message"] and r.headers["retry-after"]
    finally:
        install(saved)


# ---- 504: deadlines -------------------------------------------------------------------------

async def test_request_timeout_is_504_naming_the_step_and_cancels_the_call():
    fake = GatedModels()  # never released: only the deadline can end the call
    async with client_for(Gateway(fake_config(), fake)) as c:
        r = await c.post("/v1/pipelines/text_to_image", json=t2i(), headers={
            "X-Request-Timeout": "0.2", **NO_STORE})
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "step_timeout" and err["field"] == "steps.generate"
    assert "step 'generate'" in err["message"] and "X-Request-Timeout" in err["message"]
    assert fake.cancelled == 1 and fake.running == 0


async def test_request_timeout_in_a_stream_is_an_error_event():
    fake = GatedModels()
    async with client_for(Gateway(fake_config(), fake)) as c:
        r = await c.post("/v1/pipelines/text_to_image?stream=true", json=t2i(),
                         headers={"X-Request-Timeout": "0.2", **NO_STORE})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    (start, started), (kind, data) = sse_events(r.text)  # generate began, then timed out
    assert start == "start" and started["step"] == "generate"
    assert kind == "error" and data["error"]["code"] == "step_timeout"
    assert data["error"]["field"] == "steps.generate" and data["error"]["request_id"]
    assert fake.cancelled == 1


async def test_a_steps_own_timeout_is_504_too():
    fake = GatedModels(gated=("caption",))
    pipe = {"name": "slow_caption", "inputs": {"image": "image"},
            "steps": {"cap": {"model": "captioner", "task": "caption", "timeout_s": 0.1,
                              "with": {"image": "$inputs.image"}}},
            "outputs": {"text": "$steps.cap.text"}}
    async with client_for(Gateway(fake_config(pipelines=[pipe]), fake)) as c:
        r = await c.post("/v1/pipelines/slow_caption", json={"inputs": {
            "image": base64.b64encode(png()).decode()}}, headers={"X-Request-Timeout": "60"})
    assert r.status_code == 504 and r.json()["error"]["field"] == "steps.cap"
    assert "0.1s" in r.json()["error"]["message"]  # the step's own limit was the smaller


async def test_request_timeout_on_an_openai_route_is_504_in_openais_body():
    fake = GatedModels()
    async with client_for(Gateway(fake_config(), fake)) as c:
        r = await c.post("/v1/images/generations", json={"prompt": "a fox", "model": "diffusion"},
                         headers={"X-Request-Timeout": "0.2"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "step_timeout"
    assert r.json()["error"]["type"] == "server_error" and fake.cancelled == 1


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "1e9"])
async def test_a_bad_request_timeout_is_422_naming_the_header(value):
    async with client_for(Gateway(fake_config(), FakeModels())) as c:
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "x"}},
                         headers={"X-Request-Timeout": value})
    assert r.status_code == 422 and r.json()["error"]["field"] == "X-Request-Timeout"


# ---- 502 and error events -------------------------------------------------------------------

async def test_a_model_crash_is_502_step_failed_plain_and_in_sse():
    fake = FakeModels(fail={"generate": RuntimeError("CUDA out of memory")})
    async with client_for(Gateway(fake_config(), fake)) as c:
        r = await c.post("/v1/pipelines/text_to_image", json=t2i(), headers=NO_STORE)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "step_failed" and err["field"] == "steps.generate"
        assert "CUDA out of memory" in err["message"]
        r = await c.post("/v1/pipelines/text_to_image", json=t2i(), headers={
            "Accept": "text/event-stream", **NO_STORE})
    kind, data = sse_events(r.text)[-1]  # after the step's progress events
    assert kind == "error" and data["error"]["code"] == "step_failed"
    assert data["error"]["field"] == "steps.generate"


# ---- client disconnects ---------------------------------------------------------------------

async def _asgi_post(app, path: str, body: dict, disconnect: asyncio.Event,
                     headers: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    """POST through raw ASGI; ``receive`` answers ``http.disconnect`` once ``disconnect`` is
    set, as a server does when the client goes away."""
    raw = json.dumps(body).encode()
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), *headers],
             "client": ("127.0.0.1", 1), "server": ("gw", 80)}
    await app(scope, receive, send)
    return sent


async def test_a_disconnected_stream_cancels_its_model_call():
    fake = GatedModels()
    gw = Gateway(fake_config(), fake)
    gone = asyncio.Event()
    request = asyncio.ensure_future(_asgi_post(
        create_api(lambda: gw), "/v1/pipelines/text_to_image", t2i(), gone,
        [(b"accept", b"text/event-stream"), (b"cache-control", b"no-store")]))
    await fake.started.wait()
    gone.set()  # the client goes away mid-pipeline
    await asyncio.wait_for(request, 30)
    await until(lambda: fake.cancelled == 1 and gw.admission.in_flight == 0,
                "the model call is cancelled and the slot given back")
    assert fake.running == 0


async def test_a_cancelled_request_cancels_its_model_call():
    """What Serve's proxy does when an HTTP client disconnects: cancel the ingress request.
    The cancellation must reach the model call and give the admission slot back."""
    fake = GatedModels()
    gw = Gateway(fake_config(), fake)
    never = asyncio.Event()
    request = asyncio.ensure_future(_asgi_post(
        create_api(lambda: gw), "/v1/pipelines/text_to_image", t2i(), never,
        [(b"cache-control", b"no-store")]))
    await fake.started.wait()
    assert gw.admission.in_flight == 1
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert fake.cancelled == 1 and fake.running == 0 and gw.admission.in_flight == 0


# ---- body limits and text that is not Unicode -----------------------------------------------

async def test_every_route_stops_reading_at_the_body_limit():
    gw = Gateway(fake_config(limits={"max_body_bytes": 1000}), FakeModels())
    pulled = 0

    async def chunks():
        nonlocal pulled
        for _ in range(50):
            pulled += 1
            yield b" " * 500

    async with client_for(gw) as c:
        big = {"model": "text", "input": "x" * 5000}
        r = await c.post("/v1/embeddings", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's body
        r = await c.post("/v1/images/generations", content=chunks(),
                         headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json()["error"]["param"] == "body"
        assert pulled <= 3, f"read {pulled} chunks past a 1000-byte limit"
        r = await c.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"0" * 5000)},
                         data={"model": "whisper"})
        assert r.status_code == 413
        pulled = 0
        r = await c.post("/v1/pipelines/embed", content=chunks(),
                         headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        assert pulled <= 3
        r = await c.post("/v1/embeddings", json={"model": "text", "input": "small"})
        assert r.status_code == 200


async def test_a_lone_surrogate_is_422_naming_the_field():
    fake = FakeModels()
    body = b'{"inputs": {"text": "ok \\udc80"}}'  # valid JSON, not valid Unicode
    async with client_for(Gateway(fake_config(), fake)) as c:
        r = await c.post("/v1/pipelines/embed", content=body,
                         headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.text"
        assert "Unicode" in r.json()["error"]["message"]
        r = await c.post("/v1/models/clip/zero_shot", content=(
            b'{"inputs": {"image": "aGk=", "labels": ["a", "\\ud800b"]}}'),
            headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.labels[1]"
        r = await c.post("/v1/embeddings", content=b'{"model": "text", "input": "\\udc80"}',
                         headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"  # OpenAI's 400
    assert sum(fake.calls.values()) == 0  # no model saw them


# ---- admin ----------------------------------------------------------------------------------

async def test_admin_clears_a_real_cache(monkeypatch):
    monkeypatch.setenv("FUSION_ADMIN_KEYS", "root-key")
    fake = FakeModels()
    cache = StepCache(MemoryBackend(), namespace="admin-test")
    gw = Gateway(fake_config(auth={"key_hashes": [hash_key("user-key")]}), fake, cache)
    user, admin = {"Authorization": "Bearer user-key"}, {"Authorization": "Bearer root-key"}
    body = {"inputs": {"text": "cache me"}}
    async with client_for(gw) as c:
        assert (await c.post("/v1/pipelines/embed", json=body, headers=user)).status_code == 200
        r = await c.post("/v1/pipelines/embed", json=body, headers=user)
        assert r.json()["cache"] == "hit" and fake.calls["text/embed"] == 1
        assert (await c.delete("/v1/cache", headers=user)).status_code == 403
        r = await c.delete("/v1/cache", headers=admin)
        assert r.status_code == 200 and r.json()["deleted"] >= 2  # the step and the pipeline
        r = await c.post("/v1/pipelines/embed", json=body, headers=user)
        assert r.json()["cache"] == "miss" and fake.calls["text/embed"] == 2
