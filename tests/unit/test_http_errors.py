"""One renderer, every surface: each code of ``ERROR_CODES`` raised by a model answers the
table's status and body on the native route, the OpenAI route and inside an SSE stream."""

from __future__ import annotations

import json

import httpx
import pytest

from fusion import errors
from fusion.core.gateway import Gateway
from fusion.errors import ERROR_CODES, FusionError, SpecError
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config

CLASSES = {obj.code: obj for obj in vars(errors).values()
           if isinstance(obj, type) and issubclass(obj, FusionError) and obj is not SpecError}


def client(fail: dict[str, Exception] | None = None, **config) -> httpx.AsyncClient:
    gw = Gateway(fake_config(**config), FakeModels(fail=fail))
    transport = httpx.ASGITransport(app=create_api(lambda: gw), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


@pytest.mark.parametrize("row", ERROR_CODES, ids=lambda r: r.code)
async def test_native_route_answers_the_tables_status_and_code(row):
    async with client({"embed": CLASSES[row.code]("boom")}) as c:
        r = await c.post("/v1/models/text/embed", json={"inputs": {"text": "hi"}})
    assert r.status_code == row.status, r.text
    err = r.json()["error"]
    assert err["code"] == row.code and err["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("row", ERROR_CODES, ids=lambda r: r.code)
async def test_openai_route_answers_openais_body_and_status(row):
    async with client({"embed": CLASSES[row.code]("boom")}) as c:
        r = await c.post("/v1/embeddings", json={"model": "text", "input": "hi"})
    assert r.status_code == row.openai_status, r.text
    err = r.json()["error"]
    assert err["type"] == row.openai_type and err["code"] == row.code
    assert err["request_id"] == r.headers["x-request-id"] and "param" in err
    if row.code == "overloaded":
        assert r.headers["retry-after"] and r.headers["retry-after-ms"]


@pytest.mark.parametrize("row", [r for r in ERROR_CODES if r.code != "overloaded"],
                         ids=lambda r: r.code)
async def test_sse_error_event_carries_the_native_body(row):
    async with client({"embed": CLASSES[row.code]("boom")}) as c:
        r = await c.post("/v1/pipelines/embed?stream=true", json={"inputs": {"text": "hi"}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    kind, data = events(r.text)[-1]
    assert kind == "error" and data["error"]["code"] == row.code
    assert data["error"]["request_id"] == r.headers["x-request-id"]


def test_bad_input_is_400_on_openai_routes_only():
    row = errors.ERRORS_BY_CODE["bad_input"]
    assert (row.status, row.openai_status) == (422, 400)
    assert all(r.openai_status == r.status for r in ERROR_CODES if r.code != "bad_input")


async def test_an_unexpected_exception_is_a_500_with_the_id_on_every_surface():
    async with client({"embed": RuntimeError("bug")}) as c:
        native = await c.post("/v1/models/text/embed", json={"inputs": {"text": "hi"}})
        oai = await c.post("/v1/embeddings", json={"model": "text", "input": "hi"})
        sse = await c.post("/v1/pipelines/embed?stream=true", json={"inputs": {"text": "hi"}})
    assert native.status_code == 500 and native.json()["error"]["code"] == "internal_error"
    assert oai.status_code == 500 and oai.json()["error"]["type"] == "server_error"
    assert oai.json()["error"]["request_id"] == oai.headers["x-request-id"]
    # a pipeline step's crash is the model's failure (502), named by the executor
    assert events(sse.text)[-1][1]["error"]["code"] == "step_failed"


async def test_unknown_route_and_playground_asset_404s_carry_the_request_id():
    async with client() as c:
        for path in ("/v1/nothing-here", "/playground/static/nope.js"):
            r = await c.get(path)
            assert r.status_code == 404, path
            err = r.json()["error"]
            assert err["code"] == "not_found" and err["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "llm", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/embeddings", {"model": "text", "input": "x"}),
    ("/v1/models/text/embed", {"inputs": {"text": "x"}}),
])
async def test_an_over_limit_body_is_413_on_every_route(path, body):
    async with client(limits={"max_body_bytes": 64}) as c:
        body = {**body, "pad": "x" * 200}
        r = await c.post(path, content=json.dumps(body),
                         headers={"content-type": "application/json",
                                  "transfer-encoding": "chunked"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
