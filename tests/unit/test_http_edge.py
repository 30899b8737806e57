"""The edge's headers: exactly one ``x-request-id`` (in-process and behind Serve's proxy
middleware), and CORS off by default, on for the configured origins."""

from __future__ import annotations

import httpx
from ray.serve._private.http_util import RequestIdMiddleware as ServeRequestId

from fusion.core.gateway import Gateway
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config

APP_ORIGIN = "https://app.example.com"


def client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


class BuggyInfo(FakeModels):
    """A model client whose ``info`` has a bug: ``GET /v1/models`` answers the 500 of an
    unexpected exception, which Starlette sends from outside every middleware."""

    async def info(self, model: str) -> dict:
        raise RuntimeError("a bug")


def gateway(**config) -> Gateway:
    return Gateway(fake_config(**config), FakeModels())


async def test_in_process_every_answer_carries_one_request_id():
    gw, buggy = gateway(), Gateway(fake_config(), BuggyInfo())
    async with client(create_api(lambda: buggy)) as c:
        r = await c.get("/v1/models")
        assert r.status_code == 500 and len(r.headers.get_list("x-request-id")) == 1
    async with client(create_api(lambda: gw)) as c:
        for r in (await c.get("/healthz"), await c.get("/v1/nope"),
                  await c.post("/v1/pipelines/embed", json={"inputs": {"text": "hi"}}),
                  await c.post("/v1/embeddings", json={"model": "ghost", "input": "x"})):
            ids = r.headers.get_list("x-request-id")
            assert len(ids) == 1 and len(ids[0]) == 32, (r.request.url, ids)
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "hi"}},
                         headers={"X-Request-Id": "mine-1"})
        assert r.headers.get_list("x-request-id") == ["mine-1"]
        assert r.json()["request_id"] == "mine-1"


async def test_behind_serves_proxy_middleware_the_proxys_id_is_the_one_id():
    """Serve's proxy wraps the app in its own ``RequestIdMiddleware`` (it always appends
    ``X-Request-ID``): the app reuses that id and adds none, so clients read one id."""
    gw, buggy = gateway(), Gateway(fake_config(), BuggyInfo())
    app = ServeRequestId(create_api(lambda: gw, proxy_sets_request_id=True))
    async with client(app) as c:
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "hi"}})
        [rid] = r.headers.get_list("x-request-id")
        assert r.json()["request_id"] == rid
        r = await c.get("/v1/models/ghost", headers={"X-Request-Id": "client-7"})
        assert r.headers.get_list("x-request-id") == ["client-7"]
        assert r.status_code == 404 and r.json()["error"]["request_id"] == "client-7"
    app = ServeRequestId(create_api(lambda: buggy, proxy_sets_request_id=True))
    async with client(app) as c:
        r = await c.get("/v1/models")
        [rid] = r.headers.get_list("x-request-id")  # a bug's 500 too
        assert r.status_code == 500 and r.json()["error"]["request_id"] == rid


async def test_cors_is_off_by_default():
    gw = gateway()
    async with client(create_api(lambda: gw)) as c:
        r = await c.options("/v1/pipelines/embed", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = await c.get("/v1/models", headers={"Origin": APP_ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_cors_answers_preflights_and_exposes_headers_for_configured_origins():
    gw = gateway(router={"cors_allow_origins": [APP_ORIGIN]})
    async with client(create_api(lambda: gw)) as c:
        r = await c.options("/v1/pipelines/embed", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-request-timeout"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "x-request-timeout" in r.headers["access-control-allow-headers"].lower()
        assert len(r.headers.get_list("x-request-id")) == 1
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "hi"}},
                         headers={"Origin": APP_ORIGIN})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = await c.get("/v1/models", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers


async def test_the_app_survives_serves_copy_into_the_deployment():
    """``@serve.ingress`` freezes the app with a cloudpickle round trip: functions that are
    not importable (closures) come back by value, without the module globals their string
    annotations name, and FastAPI would then read ``request: Request`` as a required query
    parameter. Every operation must keep its parameters through that copy."""
    from ray import cloudpickle
    from ray._common.serialization import pickle_dumps
    from ray.serve._private.utils import ensure_serialization_context

    from fusion.core.gateway import current_gateway, install, installed

    saved = installed()
    install(gateway())
    try:
        original = create_api(current_gateway)
        ensure_serialization_context()  # what serve.ingress does, in that order
        copied = cloudpickle.loads(pickle_dumps(original, error_msg="cannot copy the app"))
        assert copied.openapi()["paths"] == original.openapi()["paths"]
        async with client(copied) as c:
            r = await c.post("/v1/embeddings", json={"model": "text", "input": "hi"})
            assert r.status_code == 200, r.text
            r = await c.post("/v1/images/generations", json={"prompt": "x", "size": "8x8"})
            assert r.status_code == 200, r.text
    finally:
        install(saved)


async def test_the_deadline_counts_from_arrival_not_from_when_a_route_asks():
    """Every route's deadline is the arrival instant (set once, by the outermost
    middleware) plus ``X-Request-Timeout``: time spent reading an upload or describing a
    chat's images is charged to the client's budget, however late the route asks."""
    from starlette.requests import Request

    from fusion.http.context import request_deadline

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"x-request-timeout", b"5")],
             "state": {"request_id": "r", "arrived": 100.0}}
    assert await request_deadline(Request(scope)) == 105.0
    assert await request_deadline(Request({**scope, "headers": []})) is None
