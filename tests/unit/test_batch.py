"""List requests (``fusion.core.batch``): many items of one task as one model call, with per-item
cache look-ups in one round trip. The gateway runs over HTTP in-process with fake models and
a real cache (in-process LRU and the real Redis); the fakes record every list they receive.
"""

from __future__ import annotations

import base64
import threading
import uuid

import httpx
import pytest

from fusion.cache import MemoryBackend, RedisBackend, StepCache
from fusion.config import CacheConfig, ModelConfig
from fusion.core.gateway import Gateway
from fusion.errors import BadInput
from fusion.http.app import create_api
from fusion.serve.served import ServedModel
from tests.fakes import FakeModels, WeightlessBackend, fake_config, png
from tests.redis_server import redis_url


@pytest.fixture(params=["memory", "redis"])
async def env(request):
    url = redis_url() if request.param == "redis" else None
    cfg = CacheConfig(redis_url=url, namespace=f"batch-{uuid.uuid4().hex[:8]}")
    fake = FakeModels()
    cache = StepCache.from_config(cfg)
    gw = Gateway(fake_config(cache=cfg.model_dump(), limits={"max_list_items": 8,
                                                              "max_embedding_inputs": 8}),
                 fake, cache)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                                 base_url="http://gw") as client:
        yield client, fake, cache
    await cache.clear()
    await cache.aclose()


def texts(*words: str) -> dict:
    return {"inputs": [{"text": w} for w in words]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_list_is_one_model_call_and_keeps_order(env):
    client, fake, _ = env
    words = ["one", "two", "three", "four", "five"]
    r = await client.post("/v1/models/text/embed", json=texts(*words))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == [FakeModels.compute("embed", {"text": w}) for w in words]
    assert body["cached"] == [False] * 5 and r.headers["x-fusion-cache"] == "miss"
    assert body["types"] == {"embedding": "embedding"}
    assert fake.batches == [("text/embed", 5)] and not fake.calls  # no per-item calls


async def test_mixed_hits_and_misses_compute_only_the_misses(env):
    client, fake, cache = env
    await client.post("/v1/models/text/embed", json=texts("a", "b"))
    r = await client.post("/v1/models/text/embed", json=texts("c", "a", "d", "b"))
    assert r.status_code == 200, r.text
    assert r.json()["cached"] == [False, True, False, True]
    assert r.headers["x-fusion-cache"] == "partial"
    assert r.json()["outputs"] == [FakeModels.compute("embed", {"text": w})
                                   for w in ("c", "a", "d", "b")]
    assert fake.batches[-1] == ("text/embed", 2)
    r = await client.post("/v1/models/text/embed", json=texts("d", "c"))
    assert r.json()["cached"] == [True, True] and r.headers["x-fusion-cache"] == "hit"
    assert len(fake.batches) == 2  # all hits: the model was not called
    # a single-item call shares the list's cache entries (same content address)
    single = await client.post("/v1/models/text/embed", json={"inputs": {"text": "a"}})
    assert single.json()["cached"] is True
    assert cache.stats()["by_label"]["text/embed"]["hits"] == 5


async def test_identical_items_in_one_list_are_computed_once(env):
    client, fake, _ = env
    r = await client.post("/v1/models/text/embed", json=texts("x", "y", "x", "x"))
    out = r.json()["outputs"]
    assert out[0] == out[2] == out[3] != out[1]
    assert fake.batches == [("text/embed", 2)]


async def test_no_store_neither_reads_nor_writes(env):
    client, fake, _ = env
    await client.post("/v1/models/text/embed", json=texts("p", "q"))
    r = await client.post("/v1/models/text/embed", json=texts("p", "q", "r"),
                          headers={"Cache-Control": "no-store"})
    assert r.json()["cached"] == [False, False, False]
    assert fake.batches[-1] == ("text/embed", 3)
    r = await client.post("/v1/models/text/embed", json=texts("r"))
    assert r.json()["cached"] == [False]


async def test_bad_item_in_the_router_names_its_index(env):
    client, fake, _ = env
    r = await client.post("/v1/models/text/embed",
                          json={"inputs": [{"text": "a"}, {"text": "b"}, {"text": "c"},
                                           {"text": 5}]})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "inputs[3].text"
    r = await client.post("/v1/models/text/embed", json={"inputs": [{"text": "a"}, "b"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs[1]"
    r = await client.post("/v1/models/clip/embed_image",
                          json={"inputs": [{"image": b64(png())}, {"image": "%%%"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs[1].image"
    assert not fake.batches


async def test_bad_item_in_the_replica_names_its_index_in_the_clients_list(env):
    """The replica numbers only the misses it was sent; the error names the client's index."""
    client, fake, _ = env
    good = b64(png((1, 2, 3)))
    await client.post("/v1/models/captioner/caption", json={"inputs": [{"image": good}]})
    r = await client.post("/v1/models/captioner/caption",
                          json={"inputs": [{"image": good}, {"image": b64(png((9, 9, 9)))},
                                           {"image": b64(b"not a png")}]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "inputs[2].image" and err["message"].startswith("inputs[2]")
    assert fake.batches[-1] == ("captioner/caption", 2)


async def test_oversize_and_empty_lists_are_422_naming_inputs(env):
    client, fake, _ = env
    r = await client.post("/v1/models/text/embed", json=texts(*"abcdefghi"))  # 9 > 8
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "inputs" and "limit" in r.json()["error"]["message"]
    r = await client.post("/v1/models/text/embed", json={"inputs": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs"
    r = await client.post("/v1/models/diffusion/generate", json={"inputs": [{"prompt": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs"
    assert not fake.batches


async def test_openai_embeddings_send_the_list_as_one_batch(env):
    client, fake, _ = env
    words = [f"w{i}" for i in range(6)]
    r = await client.post("/v1/embeddings", json={"model": "text", "input": words})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(6))
    assert [d["embedding"] for d in data] == [FakeModels.compute("embed", {"text": w})[
        "embedding"] for w in words]
    assert fake.batches == [("text/embed", 6)]
    r = await client.post("/v1/embeddings", json={"model": "clip", "input": "a photo"})
    assert r.status_code == 200 and fake.batches[-1] == ("clip/embed_text", 1)


async def test_openai_embeddings_errors_name_the_input_index(env):
    client, fake, _ = env
    r = await client.post("/v1/embeddings", json={"model": "text", "input": ["a", "", "c"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
    r = await client.post("/v1/embeddings", json={"model": "text", "input": ["a"] * 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = await client.post("/v1/embeddings",
                          json={"model": "text", "input": ["a", "b", "c", "x" * 20_001]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[3]"
    assert not fake.batches


async def test_embedding_tasks_take_longer_lists_than_other_tasks():
    """OpenAI's 2,048 inputs (LangChain sends 1,000) for embedding tasks; other list requests
    keep ``max_list_items``. Each knob is named in its own error."""
    fake = FakeModels()
    gw = Gateway(fake_config(limits={"max_list_items": 3, "max_embedding_inputs": 10}), fake,
                 StepCache.from_config(CacheConfig(redis_url=None)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                                 base_url="http://gw") as client:
        words = [f"w{i}" for i in range(10)]
        r = await client.post("/v1/embeddings", json={"model": "text", "input": words})
        assert r.status_code == 200 and len(r.json()["data"]) == 10
        r = await client.post("/v1/models/text/embed", json=texts(*words))
        assert r.status_code == 200 and r.json()["cached"] == [True] * 10
        r = await client.post("/v1/embeddings", json={"model": "text", "input": words + ["x"]})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "input"
        assert "11 items, over the 10 limit (limits.max_embedding_inputs)" in err["message"]
        images = {"inputs": [{"image": b64(png((i, 0, 0)))} for i in range(4)]}
        r = await client.post("/v1/models/captioner/caption", json=images)
        assert r.status_code == 422 and "limits.max_list_items" in r.json()["error"]["message"]
    assert fake.batches == [("text/embed", 10)]


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_backend_get_many_and_set_many(kind):
    backend = MemoryBackend() if kind == "memory" else RedisBackend(redis_url(), timeout_s=2.0)
    ns = f"bm-{uuid.uuid4().hex[:8]}"
    keys = [f"{ns}:v1:k{i}" for i in range(4)]
    try:
        await backend.set_many([(keys[0], b"zero"), (keys[2], b"two\x00")], 60)
        assert await backend.get_many(keys) == [b"zero", None, b"two\x00", None]
        assert await backend.get_many([]) == []
    finally:
        await backend.clear_namespace(ns)
        await backend.aclose()


async def test_step_cache_put_many_get_many_and_an_outage_is_all_misses():
    cache = StepCache(MemoryBackend(), namespace="pm")
    assert await cache.put_many([("pm:a", {"v": 1}), ("pm:b", {"v": 2})], 60) == 2
    assert await cache.get_many(["pm:b", "pm:x", "pm:a"]) == [{"v": 2}, None, {"v": 1}]
    assert cache.stats()["total"]["hits"] == 2 and cache.stats()["total"]["misses"] == 1
    down = StepCache(RedisBackend("redis://127.0.0.1:1", timeout_s=0.05), namespace="pm")
    assert await down.get_many(["pm:a", "pm:b"]) == [None, None]
    assert await down.put_many([("pm:a", {"v": 1})]) == 0
    await down.aclose()


# -- the replica side: ServedModel.call_many, without Ray ---------------------------------------

class _RecordingText(WeightlessBackend):
    family = "text"
    runs: list[tuple[int, str]] = []

    def prepare(self, task, inputs):
        item = super().prepare(task, inputs)
        if item["text"] == "bad":
            raise BadInput("text is not usable", field="text")
        return item

    def run(self, task, items, progress=None):
        self.runs.append((len(items), threading.current_thread().name))
        return [{"embedding": [float(len(it["text"]))]} for it in items]


class _RecordingTextDeployment(ServedModel):
    backend_cls = _RecordingText


@pytest.fixture
def served() -> _RecordingTextDeployment:
    _RecordingText.runs = []
    cfg = ModelConfig.model_validate({"name": "t", "family": "text", "source": "tiny:x",
                                      "max_batch_size": 4})
    return _RecordingTextDeployment(cfg.model_dump(mode="json"))


async def test_served_call_many_runs_chunks_of_max_batch_size_off_the_loop(served):
    out = await served.call_many("embed", [{"text": "x" * n} for n in range(1, 11)])
    assert out == [{"embedding": [float(n)]} for n in range(1, 11)]
    assert [n for n, _ in _RecordingText.runs] == [4, 4, 2]
    assert all(t != threading.current_thread().name for _, t in _RecordingText.runs)


async def test_served_call_many_bad_item_names_its_index_and_runs_nothing(served):
    with pytest.raises(BadInput) as err:
        await served.call_many("embed", [{"text": "a"}, {"text": "b"}, {"text": "bad"}])
    assert err.value.field == "inputs[2].text" and err.value.message.startswith("inputs[2]")
    with pytest.raises(BadInput) as err:
        await served.call_many("embed", [{"text": "a"}, {"txt": "b"}])
    assert err.value.field == "inputs[1].txt"
    assert _RecordingText.runs == []
