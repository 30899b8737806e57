"""The HTTP layer in-process (httpx over ASGI), with fake models: shapes, errors, SSE, auth."""

from __future__ import annotations

import base64

import httpx
import pytest

from fusion.core.gateway import Gateway
from fusion.core.keys import hash_key
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config, png
from tests.sse import astream_events, sse_events


def client_for(gw: Gateway, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    app = create_api(lambda: gw)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.fixture
def fake() -> FakeModels:
    return FakeModels()


@pytest.fixture
async def client(fake):
    async with client_for(Gateway(fake_config(), fake)) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_healthz_and_request_id(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert len(r.headers["x-request-id"]) == 32
    r = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


async def test_models_list(client):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    names = {m["name"] for m in r.json()["models"]}
    assert names == {"captioner", "text", "clip", "whisper", "diffusion"}
    assert all(m["fingerprint"] for m in r.json()["models"])
    clip = next(m for m in r.json()["models"] if m["name"] == "clip")
    assert clip["inputs"]["zero_shot"]["image"] == "image"
    assert clip["inputs"]["zero_shot"]["labels"] == "list[text]"


async def test_model_call_json_and_multipart(client):
    r = await client.post("/v1/models/clip/zero_shot",
                          json={"inputs": {"image": b64(png()), "labels": ["a", "b"]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["types"] == {"labels": "labels"} and body["model"] == "clip"
    assert {x["label"] for x in body["outputs"]["labels"]} == {"a", "b"}
    r2 = await client.post("/v1/models/clip/zero_shot",
                           files={"image": ("x.png", png(), "image/png")},
                           data={"labels": "a,b"})
    assert r2.status_code == 200, r2.text
    assert r2.json()["outputs"] == body["outputs"]


async def test_pipeline_list_describes_graph(client):
    r = await client.get("/v1/pipelines")
    pipes = {p["name"]: p for p in r.json()["pipelines"]}
    fused = pipes["fused_image_labels"]
    assert fused["inputs"]["image"]["type"] == "image"
    assert set(fused["steps"]["fused"]["needs"]) == {"clip", "classify"}
    assert fused["outputs"]["labels"] == "labels"


async def test_pipeline_run_shape(client):
    r = await client.post("/v1/pipelines/caption_then_classify",
                          json={"inputs": {"image": b64(png()), "labels": ["cat", "dog"]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"outputs", "steps", "request_id", "types"}
    assert body["request_id"] == r.headers["x-request-id"]
    assert set(body["steps"]) == {"caption", "classify"}
    assert body["steps"]["caption"].keys() >= {"ms", "cached", "coalesced"}
    assert body["outputs"]["caption"].startswith("an image of")


async def test_pipeline_image_output_base64_and_raw_png(client):
    r = await client.post("/v1/pipelines/text_to_image", json={"inputs": {"prompt": "a fox"}})
    assert r.status_code == 200, r.text
    image = base64.b64decode(r.json()["outputs"]["image"])
    assert image.startswith(b"\x89PNG") and r.json()["outputs"]["caption"] is None
    raw = await client.post("/v1/pipelines/text_to_image", json={"inputs": {"prompt": "a fox"}},
                            headers={"Accept": "image/png"})
    assert raw.headers["content-type"] == "image/png" and raw.content == image


async def test_sse_stream_sends_start_progress_steps_then_result(client):
    async with client.stream("POST", "/v1/pipelines/text_to_image?stream=true",
                             json={"inputs": {"prompt": "x", "steps": 3,
                                              "then_caption": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = await astream_events(r)
    kinds = [k for k, _ in events]
    assert kinds == ["start", "progress", "progress", "progress", "step", "start", "step",
                     "result"]
    assert events[0][1] == {"step": "generate", "model": "diffusion", "task": "generate"}
    assert events[1][1] == {"step": "generate", "progress": 1, "total": 3}
    assert events[4][1]["step"] == "generate" and events[6][1]["step"] == "caption"
    assert events[-1][1]["outputs"]["caption"].startswith("an image of")


async def test_sse_error_event(client):
    async with client.stream("POST", "/v1/pipelines/caption_then_classify",
                             headers={"Accept": "text/event-stream"},
                             json={"inputs": {"image": b64(b"junk"), "labels": ["a"]}}) as r:
        text = (await r.aread()).decode()
    kind, data = sse_events(text)[-1]
    assert kind == "error" and "step 'caption'" in data["error"]["message"]


@pytest.mark.parametrize("body, field, status", [
    ({"inputs": {"image": "%%%not base64", "labels": ["a"]}}, "inputs.image", 422),
    ({"inputs": {"image": b64(b"not an image"), "labels": ["a"]}}, "inputs.image", 422),
    ({"inputs": {"image": "", "labels": ["a"]}}, "inputs.image", 422),
    ({"inputs": {"labels": ["a"]}}, "inputs.image", 422),
    ({"inputs": {"image": b64(png()), "labels": "a"}}, "inputs.labels", 422),
    ({"inputs": {"image": b64(png()), "labels": ["a"], "colour": 1}}, "inputs.colour", 422),
    ({"inputs": 5}, "inputs", 422),
])
async def test_bad_pipeline_input_is_4xx_naming_field(client, body, field, status):
    r = await client.post("/v1/pipelines/caption_then_classify", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["request_id"] == r.headers["x-request-id"]


async def test_malformed_and_empty_bodies(client):
    r = await client.post("/v1/pipelines/embed", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    r = await client.post("/v1/pipelines/embed", content=b"")
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"


async def test_unknown_names_are_404(client):
    assert (await client.post("/v1/pipelines/nope", json={"inputs": {}})).status_code == 404
    r = await client.post("/v1/models/nope/caption", json={"inputs": {}})
    assert r.status_code == 404 and r.json()["error"]["field"] == "model"
    r = await client.post("/v1/models/captioner/generate", json={"inputs": {}})
    assert r.status_code == 404 and r.json()["error"]["field"] == "task"


async def test_oversize_body_is_413():
    gw = Gateway(fake_config(limits={"max_body_bytes": 1000}), FakeModels())
    async with client_for(gw) as c:
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "x" * 2000}})
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"
        r = await c.post("/v1/models/captioner/caption",
                         files={"image": ("big.png", b"\x89PNG" + b"0" * 5000)})
        assert r.status_code == 413


async def test_embed_pipeline_takes_text_or_image(client):
    r = await client.post("/v1/pipelines/embed", json={"inputs": {"text": "hello"}})
    assert r.status_code == 200 and len(r.json()["outputs"]["embedding"]) == 8
    assert r.json()["steps"]["image"]["skipped"] is True
    r = await client.post("/v1/pipelines/embed", data={}, files={"image": ("a.png", png())})
    assert r.status_code == 200 and r.json()["steps"]["text"]["skipped"] is True


async def test_unexpected_error_is_500_with_request_id():
    class Broken(FakeModels):
        async def info(self, model):
            raise KeyError("boom")

    # Starlette answers, then re-raises for the server to log; a real server swallows it
    async with client_for(Gateway(fake_config(), Broken()), raise_app_exceptions=False) as c:
        r = await c.get("/v1/models")
    assert r.status_code == 500
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


async def test_api_keys(monkeypatch):
    monkeypatch.setenv("FUSION_ADMIN_KEYS", "root-key")
    cfg = fake_config(auth={"key_hashes": [hash_key("user-key")]})
    async with client_for(Gateway(cfg, FakeModels())) as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/v1/pipelines")
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
        bad = {"Authorization": "Bearer nope"}
        assert (await c.get("/v1/pipelines", headers=bad)).status_code == 401
        user = {"Authorization": "Bearer user-key"}
        assert (await c.get("/v1/pipelines", headers=user)).status_code == 200
        assert (await c.delete("/v1/cache", headers=user)).status_code == 403
        admin = {"Authorization": "Bearer root-key"}
        assert (await c.get("/v1/models", headers=admin)).status_code == 200
        assert (await c.delete("/v1/cache", headers=admin)).status_code != 403


async def test_openapi_docs(client):
    r = await client.get("/openapi.json")
    paths = r.json()["paths"]
    assert "/v1/pipelines/{name}" in paths and "/v1/embeddings" in paths
    assert (await client.get("/docs")).status_code == 200


async def test_rerank_routes_are_in_the_openapi_document_with_their_schemas(client):
    doc = (await client.get("/openapi.json")).json()
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        post = doc["paths"][path]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith("/RerankRequest") and answer.endswith("/RerankResponse")
        assert {"400", "404", "422"} <= set(post["responses"])
    request = doc["components"]["schemas"]["RerankRequest"]
    assert set(request["required"]) == {"model", "query", "documents"}
    assert {"top_n", "return_documents"} <= set(request["properties"])


async def test_openai_routes_answer_errors_in_openai_shape(monkeypatch):
    monkeypatch.setenv("FUSION_API_KEYS", "k")
    async with client_for(Gateway(fake_config(), FakeModels())) as c:
        r = await c.post("/v1/embeddings", json={"model": "text", "input": "hi"})
        assert r.status_code == 401
        assert r.json()["error"].keys() == {"message", "type", "param", "code", "request_id"}
        assert r.json()["error"]["type"] == "authentication_error"
        r = await c.post("/v1/embeddings", content=b"{oops",
                         headers={"Authorization": "Bearer k",
                                  "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "body"
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "x"}})
        assert r.json()["error"]["code"] == "unauthorized"  # the gateway's own routes: own body


async def test_text_and_list_limits_are_4xx_naming_the_field():
    gw = Gateway(fake_config(limits={"max_text_chars": 10, "max_list_items": 3}), FakeModels())
    async with client_for(gw) as c:
        r = await c.post("/v1/pipelines/embed", json={"inputs": {"text": "x" * 11}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.text"
        r = await c.post("/v1/models/clip/zero_shot", json={"inputs": {
            "image": b64(png()), "labels": ["a", "b", "c", "d"]}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.labels"
        r = await c.post("/v1/models/clip/zero_shot", json={"inputs": {
            "image": b64(png()), "labels": ["a", "much too long a label"]}})
        assert r.json()["error"]["field"] == "inputs.labels[1]"
        r = await c.post("/v1/models/clip/zero_shot", json={"inputs": {
            "image": b64(png()), "labels": ["a", "b", "c"]}})
        assert r.status_code == 200


async def test_chunked_oversize_body_is_refused_without_a_length():
    gw = Gateway(fake_config(limits={"max_body_bytes": 1000}), FakeModels())

    async def chunks():
        for _ in range(10):
            yield b" " * 500

    async with client_for(gw) as c:
        r = await c.post("/v1/pipelines/embed", content=chunks(),
                         headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
