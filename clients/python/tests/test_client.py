"""Client plumbing: configuration, headers, routes, typed results; sync and async alike."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import LABELS, PNG, b64, pipeline_result, run_async

from fusion_client import (
    AsyncFusionClient,
    CacheStats,
    FusionClient,
    ModelInfo,
    NotFound,
    PipelineInfo,
    PipelineResult,
)


def test_defaults(monkeypatch):
    client = FusionClient()
    assert client.base_url == "http://127.0.0.1:8000"
    assert client.api_key is None and client.retries == 3 and client.timeout == 60.0
    monkeypatch.setenv("FUSION_URL", "http://gw:9000/")
    monkeypatch.setenv("FUSION_API_KEY", "env-key")
    client = FusionClient()
    assert client.base_url == "http://gw:9000" and client.api_key == "env-key"
    client = FusionClient("http://other", api_key="arg-key", retries=5)
    assert client.base_url == "http://other" and client.api_key == "arg-key"
    assert client.retries == 5
    assert repr(client) == "FusionClient(base_url='http://other')"
    assert FusionClient(api_key="").api_key is None  # explicit "" disables the env key


def test_bearer_key_and_user_agent(gateway, monkeypatch):
    monkeypatch.setenv("FUSION_API_KEY", "sekret")
    with FusionClient(transport=gateway.transport) as client:
        client.models()
    headers = gateway.requests[-1].headers
    assert headers["authorization"] == "Bearer sekret"
    assert headers["user-agent"].startswith("fusion-client/")


def test_no_key_no_authorization_header(gateway, client):
    client.models()
    assert "authorization" not in gateway.requests[-1].headers


def test_base_url_with_path_prefix(gateway):
    with FusionClient("http://host/fusion/", transport=gateway.transport) as client:
        gateway.route("GET", "/fusion/v1/models", {"models": []})
        assert client.models() == []
    assert gateway.requests[-1].url == "http://host/fusion/v1/models"


def test_pipelines_listing(client):
    items = client.pipelines()
    assert all(isinstance(p, PipelineInfo) for p in items)
    first = items[0]
    assert first.input_types == {"image": "image", "labels": "list[text]"}
    assert first.steps["classify"].needs == ["caption"]
    t2i = client.pipeline("text_to_image")
    assert t2i.inputs["prompt"].type == "text" and t2i.inputs["prompt"].required
    assert t2i.inputs["seed"].default == 0 and not t2i.inputs["seed"].required
    assert client.pipeline("missing") is None


def test_models_listing(client):
    models = client.models()
    assert models[1] == ModelInfo(name="text", family="text", backend="embedding",
                                  tasks=["embed", "zero_shot"], source="tiny:text",
                                  fingerprint="def", device="cuda:0", dtype="fp16")


def test_run_returns_typed_result(gateway, client):
    body = pipeline_result({"caption": "a cat", "labels": LABELS},
                           {"caption": "text", "labels": "labels"}, cache="partial", rid="r1")
    body["steps"]["classify"] = {"ms": 3, "cached": True, "coalesced": True, "skipped": False}
    gateway.route("POST", "/v1/pipelines/caption_then_classify", body)
    result = client.run("caption_then_classify", image=PNG, labels=["cat", "dog"])
    assert isinstance(result, PipelineResult)
    assert result.outputs == {"caption": "a cat", "labels": LABELS}
    assert result.request_id == "r1" and result.cache == "partial"
    assert result.steps["classify"].cached and result.steps["classify"].coalesced
    assert result.steps["caption"].ms == 12.5
    request = gateway.requests[-1]
    assert request.url.path == "/v1/pipelines/caption_then_classify"
    assert "cache-control" not in request.headers
    assert json.loads(request.content) == {"inputs": {"image": b64(PNG), "labels": ["cat", "dog"]}}


def test_run_fills_request_id_and_cache_from_headers(gateway, client):
    gateway.route("POST", "/v1/pipelines/text_to_image", httpx.Response(
        200, json={"outputs": {"caption": "x"}, "types": {"caption": "text"}},
        headers={"X-Request-Id": "hdr", "X-Fusion-Cache": "hit"}))
    result = client.run("text_to_image", prompt="p")
    assert result.request_id == "hdr" and result.cache == "hit" and result.steps == {}


def test_result_without_outputs_is_a_server_error(gateway, client):
    from fusion_client import ServerError

    gateway.route("POST", "/v1/pipelines/text_to_image", {"nope": 1})
    with pytest.raises(ServerError, match="outputs"):
        client.run("text_to_image", prompt="p")


@pytest.mark.parametrize("value", ["no-cache", "no-store"])
def test_cache_control_header(gateway, client, value):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result({}, {}))
    gateway.route("POST", "/v1/models/text/embed", {"outputs": {}, "types": {}})
    client.run("text_to_image", prompt="p", cache_control=value)
    assert gateway.requests[-1].headers["cache-control"] == value
    client.call("text", "embed", text="p", cache_control=value)
    assert gateway.requests[-1].headers["cache-control"] == value


def test_bad_cache_control_value(client):
    with pytest.raises(ValueError, match="cache_control"):
        client.run("text_to_image", prompt="p", cache_control="max-age=0")


def test_inputs_named_like_parameters(gateway, client):
    """``pipeline``/``model``/``task``/``inputs`` are positional-only, so any input name works."""
    gateway.route("POST", "/v1/pipelines/p", pipeline_result({}, {}))
    gateway.route("POST", "/v1/models/m/t", {"outputs": {}, "types": {}})
    client.run("p", pipeline="x", name="y", inputs="z")
    assert gateway.bodies()[-1] == {"inputs": {"pipeline": "x", "name": "y", "inputs": "z"}}
    client.call("m", "t", {"model": 1}, task=2)
    assert gateway.bodies()[-1] == {"inputs": {"model": 1, "task": 2}}


def test_names_are_quoted_in_paths(gateway, client):
    gateway.route("POST", "/v1/models/a b/x/y", {"outputs": {}, "types": {}})
    client.call("a b", "x/y", text="t")
    assert gateway.requests[-1].url.raw_path == b"/v1/models/a%20b/x%2Fy"


def test_call_returns_typed_result(gateway, client):
    gateway.route("POST", "/v1/models/text/zero_shot", {
        "outputs": {"labels": LABELS}, "types": {"labels": "labels"}, "model": "text",
        "task": "zero_shot", "ms": 4.5, "cached": True, "coalesced": False,
        "request_id": "r"})
    result = client.call("text", "zero_shot", text="a cat", labels=["cat", "dog"])
    assert result.outputs["labels"] == LABELS
    assert (result.model, result.task, result.ms, result.cached, result.request_id) == \
        ("text", "zero_shot", 4.5, True, "r")
    assert gateway.bodies()[-1] == {"inputs": {"text": "a cat", "labels": ["cat", "dog"]}}


def test_call_unknown_model(gateway, client):
    gateway.route("POST", "/v1/models/nope/embed", httpx.Response(404, json={"error": {
        "code": "not_found", "message": "unknown model 'nope'", "field": "model"}}))
    with pytest.raises(NotFound, match="unknown model"):
        client.call("nope", "embed", text="x")


def test_cache_stats_and_clear(gateway, client):
    gateway.route("GET", "/v1/cache/stats", {
        "backend": "redis", "hits": 3, "misses": 1, "stores": 1, "coalesced": 2, "errors": 0,
        "bytes_read": 10, "bytes_written": 20, "per_task": {"text/embed": {"hits": 3}}})
    gateway.route("DELETE", "/v1/cache", {"deleted": 7})
    stats = client.cache_stats()
    assert isinstance(stats, CacheStats) and stats.backend == "redis"
    assert stats.hit_rate == 0.75 and stats.per_task["text/embed"]["hits"] == 3
    assert client.clear_cache() == 7
    gateway.route("GET", "/v1/cache/stats", {"backend": "disabled"})
    assert client.cache_stats().hit_rate is None


def test_health(client):
    assert client.health() == {"status": "ok"}


def test_async_client_has_the_same_api(gateway, make_async):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", pipeline_result(
        {"caption": "c", "labels": LABELS}, {"caption": "text", "labels": "labels"}))
    gateway.route("POST", "/v1/models/text/embed",
                  {"outputs": {"embedding": [1.0]}, "types": {"embedding": "embedding"}})
    gateway.route("GET", "/v1/cache/stats", {"backend": "memory", "hits": 1})
    gateway.route("DELETE", "/v1/cache", {"deleted": 2})

    async def go():
        async with make_async(api_key="k") as client:
            return (await client.health(), await client.pipelines(),
                    await client.pipeline("text_to_image"), await client.models(),
                    await client.run("caption_then_classify", image=PNG, labels=["a"],
                                     cache_control="no-store"),
                    await client.call("text", "embed", text="t"),
                    await client.cache_stats(), await client.clear_cache())

    health, pipelines, t2i, models, run, call, stats, deleted = run_async(go())
    assert health["status"] == "ok" and len(pipelines) == 4 and t2i.name == "text_to_image"
    assert len(models) == 2 and run.outputs["caption"] == "c"
    assert call.outputs == {"embedding": [1.0]} and stats.hits == 1 and deleted == 2
    assert all(r.headers["authorization"] == "Bearer k" for r in gateway.requests)
    posted = [r for r in gateway.requests if r.method == "POST"]
    assert posted[0].headers["cache-control"] == "no-store"


def test_sync_and_async_share_method_names():
    public = {n for n in dir(FusionClient) if not n.startswith("_")}
    assert public <= {n for n in dir(AsyncFusionClient) if not n.startswith("_")} | {"close"}
    assert {"pipelines", "run", "stream", "models", "call", "cache_stats", "clear_cache"} <= public


# ---- transports --------------------------------------------------------------------------

async def tiny_asgi_app(scope, receive, send):
    """A hand-written ASGI app (no framework) standing in for the gateway in-process."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/v1/pipelines":
        payload = {"pipelines": [{"name": "echo", "inputs": {"image": "image"},
                                  "outputs": {"image": "image"}}]}
    else:
        sent = json.loads(body)["inputs"]
        payload = {"outputs": sent, "types": {"image": "image"}, "steps": {},
                   "request_id": "asgi", "cache": "miss"}
    if scope["path"].endswith("/stream-me"):
        raw = f"event: result\ndata: {json.dumps(payload)}\n\n".encode()
        ctype = b"text/event-stream"
    else:
        raw, ctype = json.dumps(payload).encode(), b"application/json"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype), (b"x-request-id", b"asgi")]})
    await send({"type": "http.response.body", "body": raw})


def test_sync_client_over_an_async_transport():
    with FusionClient("http://test", transport=httpx.ASGITransport(tiny_asgi_app),
                      decode_images=False) as client:
        result = client.run("echo", image=PNG)
        assert result.outputs["image"] == PNG and result.request_id == "asgi"
        (event,) = client.stream("stream-me", image=PNG)
        assert event.result.outputs["image"] == PNG


def test_async_client_over_an_asgi_transport():
    async def go():
        async with AsyncFusionClient("http://test", decode_images=False,
                                     transport=httpx.ASGITransport(tiny_asgi_app)) as client:
            result = await client.run("echo", image=PNG)
            events = [e async for e in client.stream("stream-me", image=PNG)]
            return result, events

    result, events = run_async(go())
    assert result.outputs["image"] == PNG
    assert events[0].result.outputs["image"] == PNG


def test_real_connection_refused_is_connection_failed():
    from fusion_client import ConnectionFailed

    with FusionClient("http://127.0.0.1:9", retries=1, timeout=2) as client:
        client._sleep = lambda s: None
        with pytest.raises(ConnectionFailed):
            client.models()


def test_timeout_s_is_sent_as_the_request_deadline(gateway, client):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result({}, {}))
    gateway.route("POST", "/v1/models/text/embed", {"outputs": {}, "types": {}})
    client.run("text_to_image", prompt="p", timeout_s=2.5)
    assert gateway.requests[-1].headers["x-request-timeout"] == "2.5"
    client.call("text", "embed", text="p", timeout_s=10)
    assert gateway.requests[-1].headers["x-request-timeout"] == "10"
    client.run("text_to_image", prompt="p")
    assert "x-request-timeout" not in gateway.requests[-1].headers
    with pytest.raises(ValueError, match="timeout_s"):
        client.run("text_to_image", prompt="p", timeout_s=0)


def test_call_many_sends_one_list_and_keeps_order(gateway, client):
    gateway.route("POST", "/v1/models/clip/embed_image", {
        "outputs": [{"embedding": [1.0]}, {"embedding": [2.0]}],
        "cached": [False, True], "types": {"embedding": "embedding"}, "model": "clip",
        "task": "embed_image", "ms": 3.0, "request_id": "r"})
    result = client.call_many("clip", "embed_image", [{"image": PNG}, {"image": PNG}],
                              cache_control="no-cache")
    assert [o["embedding"] for o in result.outputs] == [[1.0], [2.0]]
    assert result.cached == [False, True] and result.request_id == "r"
    assert gateway.bodies()[-1] == {"inputs": [{"image": b64(PNG)}, {"image": b64(PNG)}]}
    assert gateway.requests[-1].headers["cache-control"] == "no-cache"
    with pytest.raises(ValueError):
        client.call_many("clip", "embed_image", [])


def test_embed_texts_is_one_list_request(gateway, client, make_async):
    gateway.route("POST", "/v1/models/text/embed", {
        "outputs": [{"embedding": [0.5]}, {"embedding": [0.25]}], "cached": [False, False],
        "types": {"embedding": "embedding"}})
    assert client.embed(["a", "b"]) == [[0.5], [0.25]]
    assert gateway.bodies()[-1] == {"inputs": [{"text": "a"}, {"text": "b"}]}
    with pytest.raises(TypeError):
        client.embed("ab")

    async def go():
        async with make_async() as aclient:
            return await aclient.embed(["a", "b"])

    assert run_async(go()) == [[0.5], [0.25]]
