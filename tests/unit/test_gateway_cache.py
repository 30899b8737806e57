"""The gateway with a real cache (in-process LRU and a real Redis), driven over HTTP in-process.

Models are fakes that count their calls, so each test sees exactly what the cache spared.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import pytest

from fusion.cache import StepCache
from fusion.config import CacheConfig
from fusion.core.gateway import Gateway
from fusion.core.keys import hash_key
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config, png
from tests.redis_server import redis_url
from tests.unit.cache_helpers import until


@pytest.fixture(params=["memory", "redis"])
def cache_config(request) -> CacheConfig:
    url = redis_url() if request.param == "redis" else None
    # these tests count computations exactly: a command slowed past the 0.1 s default by a
    # loaded machine would open the breaker and let a request compute again. Outages have
    # their own tests (test_gateway_redis_outage.py).
    return CacheConfig(redis_url=url, namespace=f"test-{uuid.uuid4().hex[:8]}",
                       redis_timeout_s=2.0)


@pytest.fixture
async def env(cache_config):
    fake = FakeModels(delays={"caption": 0.05, "generate": 0.05})
    cache = StepCache.from_config(cache_config)
    # anonymous callers (no key) as on a laptop, and an admin key for the admin routes
    auth = {"anonymous": True, "admin_key_hashes": [hash_key("root")]}
    gw = Gateway(fake_config(cache=cache_config.model_dump(), auth=auth), fake, cache)
    app = create_api(lambda: gw)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:
        yield client, fake, gw
    await cache.clear()
    await cache.aclose()


def image_inputs(color=(1, 2, 3)) -> dict:
    return {"image": base64.b64encode(png(color)).decode(), "labels": ["cat", "dog"]}


async def test_second_identical_call_is_a_hit_with_identical_outputs(env):
    client, fake, _ = env
    first = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()})
    assert first.headers["x-fusion-cache"] == "miss"
    calls = dict(fake.calls)
    second = await client.post("/v1/pipelines/caption_then_classify",
                               json={"inputs": image_inputs()})
    assert second.headers["x-fusion-cache"] == "hit"
    assert second.json()["outputs"] == first.json()["outputs"]
    assert all(s["cached"] for s in second.json()["steps"].values())
    assert dict(fake.calls) == calls  # no model ran again


async def test_pipelines_sharing_a_first_step_reuse_its_result(env):
    client, fake, _ = env
    await client.post("/v1/pipelines/caption_then_classify", json={"inputs": image_inputs()})
    r = await client.post("/v1/pipelines/fused_image_labels", json={"inputs": image_inputs()})
    steps = r.json()["steps"]
    assert steps["caption"]["cached"] and steps["classify"]["cached"]
    assert not steps["clip"]["cached"]
    assert r.headers["x-fusion-cache"] == "partial"
    assert fake.calls["captioner/caption"] == 1


async def test_start_events_for_step_cache_hits_and_none_for_a_pipeline_hit(env):
    """A step answered by the step cache still starts (its look-up can wait on a computation
    in flight); a whole-pipeline hit runs no step, so sends no ``start``."""
    client, fake, gw = env
    await client.post("/v1/pipelines/caption_then_classify", json={"inputs": image_inputs()})
    inputs = {"image": png((1, 2, 3)), "labels": ["cat", "dog"]}
    for hit in (False, True):
        events: list[dict] = []
        await gw.run_pipeline("fused_image_labels", inputs, on_event=events.append)
        starts = {e["step"] for e in events if e["event"] == "start"}
        done = {e["step"]: e for e in events if e["event"] == "step"}
        assert starts == (set() if hit else set(done))
        assert done["caption"]["cached"] and done["classify"]["cached"]
        assert done["clip"]["cached"] == hit
    assert fake.calls["captioner/caption"] == 1


async def test_a_different_input_misses(env):
    client, fake, _ = env
    await client.post("/v1/pipelines/caption_then_classify", json={"inputs": image_inputs()})
    r = await client.post("/v1/pipelines/caption_then_classify",
                          json={"inputs": image_inputs((9, 9, 9))})
    assert r.json()["steps"]["caption"]["cached"] is False
    assert fake.calls["captioner/caption"] == 2
    # the fake's caption depends only on the PNG's length, which is the same here: the
    # classify step then has identical inputs and is rightly served from the cache
    assert r.headers["x-fusion-cache"] == "partial"


async def test_model_fingerprint_is_part_of_the_key(env):
    client, fake, gw = env
    await client.post("/v1/models/captioner/caption", json={"inputs": {"image": image_inputs()[
        "image"]}})
    fake.fingerprints["captioner"] = "fake-captioner-v2"
    gw._infos.clear()  # a new model version was deployed
    r = await client.post("/v1/models/captioner/caption",
                          json={"inputs": {"image": image_inputs()["image"]}})
    assert r.json()["cached"] is False and fake.calls["captioner/caption"] == 2


async def test_no_cache_recomputes_then_stores(env):
    client, fake, _ = env
    body = {"inputs": {"prompt": "a red fox", "seed": 3}}
    await client.post("/v1/pipelines/text_to_image", json=body)
    r = await client.post("/v1/pipelines/text_to_image", json=body,
                          headers={"Cache-Control": "no-cache"})
    assert r.headers["x-fusion-cache"] == "miss" and fake.calls["diffusion/generate"] == 2
    r = await client.post("/v1/pipelines/text_to_image", json=body)
    assert r.headers["x-fusion-cache"] == "hit" and fake.calls["diffusion/generate"] == 2


async def test_no_store_neither_reads_nor_writes(env):
    client, fake, _ = env
    body = {"inputs": {"prompt": "a blue fox", "seed": 4}}
    r = await client.post("/v1/pipelines/text_to_image", json=body,
                          headers={"Cache-Control": "no-store"})
    assert r.headers["x-fusion-cache"] == "miss"
    r = await client.post("/v1/pipelines/text_to_image", json=body)
    assert r.headers["x-fusion-cache"] == "miss" and fake.calls["diffusion/generate"] == 2


async def test_64_concurrent_identical_requests_run_the_model_once(env):
    client, fake, gw = env
    body = {"inputs": {"prompt": "a green fox", "seed": 5}}
    call = fake.call

    async def after_all_joined(model, task, inputs):
        # the model answers once all 64 requests wait on its one computation: on a loaded
        # machine a fixed model time could end before the last request arrives (a hit then)
        await until(lambda: sum(f.waiters for f in gw.cache._flights._flights.values()), 64)
        return await call(model, task, inputs)

    fake.call = after_all_joined
    responses = await asyncio.gather(*(client.post("/v1/pipelines/text_to_image", json=body)
                                       for _ in range(64)))
    assert all(r.status_code == 200 for r in responses)
    assert fake.calls["diffusion/generate"] == 1
    images = {r.json()["outputs"]["image"] for r in responses}
    assert len(images) == 1
    coalesced = sum(r.json()["steps"]["generate"]["coalesced"] for r in responses)
    assert coalesced == 63


async def test_stats_and_clear(env):
    client, _, _ = env
    await client.post("/v1/models/clip/zero_shot", json={"inputs": image_inputs()})
    await client.post("/v1/models/clip/zero_shot", json={"inputs": image_inputs()})
    stats = (await client.get("/v1/cache/stats")).json()
    assert stats["hits"] >= 1 and stats["stores"] >= 1
    assert stats["per_task"]["clip/zero_shot"]["hits"] == 1
    assert stats["scope"] == ("cluster" if stats["backend"] == "redis" else "replica")
    assert stats["replica"]["per_task"]["clip/zero_shot"]["hits"] == 1
    # admin routes answer only an admin key, even to anonymous callers
    assert (await client.delete("/v1/cache")).status_code == 401
    deleted = (await client.delete("/v1/cache", headers={"Authorization": "Bearer root"})
               ).json()["deleted"]
    assert deleted >= 1
    r = await client.post("/v1/models/clip/zero_shot", json={"inputs": image_inputs()})
    assert r.json()["cached"] is False


@pytest.mark.redis
async def test_stats_add_up_across_replicas_sharing_redis():
    """Two gateways (two router replicas) on one Redis namespace: each sees the sum."""
    cfg = CacheConfig(redis_url=redis_url(), namespace=f"test-{uuid.uuid4().hex[:8]}")
    caches = [StepCache.from_config(cfg), StepCache.from_config(cfg)]
    clients = []
    for cache in caches:
        gw = Gateway(fake_config(cache=cfg.model_dump()), FakeModels(), cache)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(
            app=create_api(lambda gw=gw: gw)), base_url="http://gw"))
    body = {"inputs": {"text": "hello"}}
    try:
        await clients[0].post("/v1/models/text/embed", json=body)  # miss + store
        for _ in range(3):
            await clients[1].post("/v1/models/text/embed", json=body)  # hits
        # a replica adds its counts when asked for stats, and otherwise at most once a
        # second: ask each once so both have added theirs, then each sees the sum
        await clients[0].get("/v1/cache/stats")
        two = (await clients[1].get("/v1/cache/stats")).json()
        one = (await clients[0].get("/v1/cache/stats")).json()
        for stats in (one, two):
            assert stats["scope"] == "cluster"
            assert stats["per_task"]["text/embed"]["hits"] == 3
            assert stats["per_task"]["text/embed"]["misses"] == 1
        assert one["replica"]["per_task"]["text/embed"]["hits"] == 0
        assert two["replica"]["per_task"]["text/embed"]["hits"] == 3
    finally:
        for client in clients:
            await client.aclose()
        await caches[0].clear()
        for cache in caches:
            await cache.aclose()
