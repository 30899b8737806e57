"""Every built-in pipeline end to end through Serve, plus streaming and caching over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest
from PIL import Image

from tests.fakes import png
from tests.integration.conftest import OWN_PIPELINE
from tests.sse import stream_events

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def gateway_url(runtime_url: str) -> str:
    """Every test here runs on both runtimes: Ray Serve, then the embedded one."""
    return runtime_url


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(http, name: str, headers: dict | None = None, **inputs) -> httpx.Response:
    r = http.post(f"/v1/pipelines/{name}", json={"inputs": inputs}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r


def test_listing(http):
    names = {p["name"] for p in http.get("/v1/pipelines").json()["pipelines"]}
    assert names == {"caption_then_classify", "text_to_image", "transcribe_then_classify",
                     "clip_zero_shot", "fused_image_labels", "embed", "classifier_with_clip",
                     OWN_PIPELINE["name"], "ask_image", "ask_audio", "describe_then_draw",
                     "ask_documents", "search_images", "shapes_fused"}


def test_caption_then_classify(http):
    out = run(http, "caption_then_classify", image=b64(png((10, 200, 10), 32)),
              labels=["cat", "dog"]).json()["outputs"]
    assert isinstance(out["caption"], str)
    assert {x["label"] for x in out["labels"]} == {"cat", "dog"}


def test_text_to_image_with_consistency_caption(http):
    r = run(http, "text_to_image", prompt="a lighthouse", seed=7, steps=2, then_caption=True)
    out = r.json()["outputs"]
    assert Image.open(io.BytesIO(base64.b64decode(out["image"]))).size == (64, 64)
    assert isinstance(out["caption"], str)
    raw = http.post("/v1/pipelines/text_to_image", headers={"Accept": "image/png"},
                    json={"inputs": {"prompt": "a lighthouse", "seed": 7, "steps": 2}})
    assert raw.headers["content-type"] == "image/png"
    assert raw.content == base64.b64decode(out["image"])


def test_transcribe_then_classify(http):
    speech = http.post("/v1/models/tts/speak", json={"inputs": {
        "text": "I really love this wonderful phone."}}).json()["outputs"]["audio"]
    out = run(http, "transcribe_then_classify", audio=speech,
              labels=["positive", "negative"]).json()["outputs"]
    assert "phone" in out["text"].lower()
    assert out["labels"][0]["label"] == "positive"


def test_clip_zero_shot_and_multipart(http):
    r = http.post("/v1/pipelines/clip_zero_shot", files={"image": ("x.png", png(), "image/png")},
                  data={"labels": "red,blue"})
    assert r.status_code == 200, r.text
    assert {x["label"] for x in r.json()["outputs"]["labels"]} == {"red", "blue"}


def test_fused_image_labels_runs_branches_in_parallel(http):
    r = run(http, "fused_image_labels", image=b64(png((5, 5, 250), 32)),
            labels=["sky", "grass", "fire"])
    body = r.json()
    fused = {x["label"]: x["score"] for x in body["outputs"]["labels"]}
    assert set(fused) == {"sky", "grass", "fire"}
    assert sum(fused.values()) == pytest.approx(1, abs=1e-6)
    assert set(body["steps"]) == {"clip", "caption", "classify", "fused"}


def test_embed_text_or_image(http):
    t = run(http, "embed", text="hello world").json()
    assert len(t["outputs"]["embedding"]) == 384 and t["steps"]["image"]["skipped"]
    i = run(http, "embed", image=b64(png())).json()
    assert i["steps"]["text"]["skipped"] and len(i["outputs"]["embedding"]) > 0


def test_sse_stream_progress_then_step_then_result(http, gateway_url):
    with httpx.stream("POST", f"{gateway_url}/v1/pipelines/text_to_image?stream=true",
                      json={"inputs": {"prompt": "a stream", "seed": 99, "steps": 3}},
                      headers={"Cache-Control": "no-store"}, timeout=120) as r:
        events = stream_events(r)
    kinds = [k for k, _ in events]
    assert kinds[:4] == ["start"] + ["progress"] * 3 and kinds[-1] == "result"
    assert "step" in kinds and kinds.index("step") < kinds.index("result")
    assert events[0][1] == {"step": "generate", "model": "diffusion", "task": "generate"}
    assert events[3][1] == {"step": "generate", "progress": 3, "total": 3}
    assert kinds.count("start") == 1  # caption is skipped: it never starts


def test_second_call_is_cached_with_identical_outputs(http):
    inputs = {"image": b64(png((1, 99, 7), 24)), "labels": ["a", "b"]}
    first = run(http, "caption_then_classify", **inputs)
    second = run(http, "caption_then_classify", **inputs)
    assert second.headers["x-fusion-cache"] == "hit"
    assert second.json()["outputs"] == first.json()["outputs"]


async def test_64_concurrent_identical_requests_across_router_replicas_compute_once(
        gateway_url):
    body = {"inputs": {"prompt": "coalesce me", "seed": 4242, "steps": 4}}
    limits = httpx.Limits(max_connections=64)  # 64 connections: both router replicas serve
    async with httpx.AsyncClient(base_url=gateway_url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*(client.post("/v1/pipelines/text_to_image",
                                                       json=body) for _ in range(64)))
    assert all(r.status_code == 200 for r in responses)
    images = {r.json()["outputs"]["image"] for r in responses}
    assert len(images) == 1
    computed = [r for r in responses if not r.json()["steps"]["generate"]["cached"]
                and not r.json()["steps"]["generate"]["coalesced"]]
    assert len(computed) == 1, [r.json()["steps"] for r in responses]
    stats = httpx.get(f"{gateway_url}/v1/cache/stats", timeout=30).json()
    assert stats["scope"] == "cluster"
