"""Router-side batching (``fusion.core.gather``): concurrent single calls of a model with
``router_batch_wait_ms`` on reach the model as one list call, each caller answered with its
own item or its own error. The gateway runs in-process over fake models (which record every
list they receive) and a real cache (in-process LRU and the real Redis).

The windows here are 50 ms (the largest allowed) and the callers join them before any I/O, so
which window a caller lands in never depends on the machine's speed; the gated fake lets a
test decide when the model answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from fusion.cache import StepCache
from fusion.config import CacheConfig, ModelConfig
from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput, Overloaded, StepTimeout
from fusion.http.app import create_api
from fusion.observe import MemoryRecorder, Observer
from fusion.serve.served import ServedModel
from fusion.tracing import Tracing
from tests.fakes import FAKE_MODELS, FakeModels, WeightlessBackend, fake_config, png
from tests.redis_server import redis_url

WAIT_MS = 50


class GatedModels(FakeModels):
    """A fake whose list calls wait for ``gate``: the test decides when the model answers."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def call_many(self, model, task, items):
        self.arrived.set()
        await self.gate.wait()
        return await super().call_many(model, task, items)


def gathering_config(wait_ms: float = WAIT_MS, size: int = 8, **extra):
    models = [dict(m) for m in FAKE_MODELS]
    for m in models:
        if m["name"] in ("text", "captioner"):
            m.update(router_batch_wait_ms=wait_ms, max_batch_size=size)
    return fake_config(models=models, **extra)


@pytest.fixture(params=["memory", "redis"])
def cache_config(request) -> CacheConfig:
    url = redis_url() if request.param == "redis" else None
    return CacheConfig(redis_url=url, namespace=f"gather-{uuid.uuid4().hex[:8]}",
                       redis_timeout_s=2.0)


@pytest.fixture
async def make(cache_config):
    made: list[tuple[Gateway, StepCache]] = []

    def build(fake: FakeModels, observer: Observer | None = None, **knobs) -> Gateway:
        cache = StepCache.from_config(cache_config)
        cfg = gathering_config(cache=cache_config.model_dump(), **knobs)
        gw = Gateway(cfg, fake, cache, observer=observer) if observer else \
            Gateway(cfg, fake, cache)
        made.append((gw, cache))
        return gw

    yield build
    for gw, cache in made:
        if gw.executor.gather is not None:
            await gw.executor.gather.aclose()
        await cache.clear()
        await cache.aclose()


async def embed(gw: Gateway, text, **kw):
    """One caller: its outputs and report, or the error it got."""
    try:
        return await gw.call_model("text", "embed", {"text": text}, **kw)
    except Exception as exc:  # noqa: BLE001 - each caller's own error is what is checked
        return exc


async def test_mixed_callers_each_get_their_own_answer_with_one_model_call(make):
    fake = FakeModels()
    gw = make(fake)
    await asyncio.gather(embed(gw, "a"), embed(gw, "b"))  # a and b are in the cache now
    assert fake.batches == [("text/embed", 2)] and not fake.calls
    fake.batches.clear()
    long = "x" * 20_001  # over limits.max_text_chars
    texts = ["a", "c", "c", "d", "b", 5, "e", "c", long]
    got = await asyncio.gather(*(embed(gw, t) for t in texts))
    for text, answer in zip(texts, got, strict=True):
        if text in (5, long):  # bad items fail alone, in the router, naming their field
            assert isinstance(answer, BadInput) and answer.field == "inputs.text", answer
            continue
        outputs, report = answer
        assert outputs == FakeModels.compute("embed", {"text": text})
        assert report.cached == (text in ("a", "b"))
    reports = [a[1] for a in got if isinstance(a, tuple)]
    assert [r.coalesced for r in reports] == [False, False, True, False, False, False, True]
    assert fake.batches == [("text/embed", 3)] and not fake.calls  # c, d, e: one call
    counts = gw.cache.stats()["by_label"]["text/embed"]
    assert (counts["hits"], counts["coalesced"]) == (2, 2)  # a, b; the two extra c's
    again = await asyncio.gather(*(embed(gw, t) for t in "cde"))
    assert all(report.cached for _, report in again) and len(fake.batches) == 1


async def test_an_item_the_replica_refuses_fails_alone_and_the_rest_is_sent_again(make):
    fake = FakeModels()
    gw = make(fake)
    images = [png((1, 1, 1)), b"not a png", png((2, 2, 2)), png((1, 1, 1)), b"not a png"]

    async def caption(image):
        try:
            return await gw.call_model("captioner", "caption", {"image": image})
        except Exception as exc:  # noqa: BLE001
            return exc

    got = await asyncio.gather(*(caption(i) for i in images))
    assert isinstance(got[1], BadInput) and isinstance(got[4], BadInput)
    assert got[1] is not got[4] and got[4].field == "inputs.image"  # each caller's own
    assert got[1].field == "inputs.image" and got[1].message == \
        "image is not a decodable image"  # as a single call says it, no list index
    for i in (0, 2, 3):
        assert got[i][0] == FakeModels.compute("caption", {"image": images[i]})
    assert fake.batches == [("captioner/caption", 3), ("captioner/caption", 2)]


async def test_a_callers_deadline_does_not_hold_the_window_nor_end_it(make):
    fake = GatedModels()
    gw = make(fake)
    late = asyncio.ensure_future(embed(gw, "slow", deadline=time.monotonic() + 1.0))
    patient = asyncio.ensure_future(embed(gw, "patient"))
    await fake.arrived.wait()  # the window was sent with both
    err = await late  # its deadline passes while the model works: its own 504
    assert isinstance(err, StepTimeout) and "deadline" in err.message
    assert not patient.done()
    fake.gate.set()
    outputs, report = await patient
    assert outputs == FakeModels.compute("embed", {"text": "patient"}) and not report.cached
    assert fake.batches == [("text/embed", 2)]
    # the late caller's item was computed and stored all the same: its retry is a hit
    _, report = await embed(gw, "slow")
    assert report.cached and len(fake.batches) == 1


async def test_a_cancelled_caller_does_not_cancel_the_window(make):
    fake = GatedModels()
    gw = make(fake)
    gone = asyncio.ensure_future(embed(gw, "gone"))
    stays = asyncio.ensure_future(embed(gw, "stays"))
    await fake.arrived.wait()
    joins = asyncio.ensure_future(embed(gw, "gone"))  # joins the window in flight
    gone.cancel()
    fake.gate.set()
    (out, _), (joined, report) = await stays, await joins
    assert gone.cancelled()
    assert out == FakeModels.compute("embed", {"text": "stays"})
    assert joined == FakeModels.compute("embed", {"text": "gone"}) and report.coalesced
    assert fake.batches == [("text/embed", 2)]


async def test_window_closes_at_max_batch_size(make):
    fake = FakeModels()
    gw = make(fake, size=2)
    got = await asyncio.gather(*(embed(gw, f"w{i}") for i in range(5)))
    assert [o for o, _ in got] == [FakeModels.compute("embed", {"text": f"w{i}"})
                                   for i in range(5)]
    assert fake.batches == [("text/embed", 2), ("text/embed", 2), ("text/embed", 1)]


async def test_a_window_wide_error_reaches_every_caller_as_its_own_copy(make):
    fake = FakeModels(fail={"embed": Overloaded("model 'text' is at its queue limit",
                                                retry_after_s=2.5)})
    gw = make(fake)
    got = await asyncio.gather(*(embed(gw, t) for t in ("x", "y", "z")))
    assert all(isinstance(e, Overloaded) and e.retry_after_s == 2.5 for e in got)
    assert len({id(e) for e in got}) == 3  # each caller's own, so qualifying one is private
    assert fake.batches == [("text/embed", 3)]


async def test_pipeline_steps_are_gathered_too(make):
    fake = FakeModels()
    gw = make(fake, size=4)
    images = [png((i, 0, 0)) for i in range(4)]
    # no-cache: no whole-pipeline look-up (a Redis round trip) before the steps, so the four
    # runs reach each step in the same turn of the loop, as concurrent requests under load do
    results = await asyncio.gather(*(gw.run_pipeline(
        "caption_then_classify", {"image": im, "labels": ["cat", "dog"]},
        CachePolicy.from_header("no-cache")) for im in images))
    for image, result in zip(images, results, strict=True):
        caption = FakeModels.compute("caption", {"image": image})["text"]
        assert result.outputs["caption"] == caption
        assert result.outputs["labels"] == FakeModels.compute(
            "zero_shot", {"text": caption, "labels": ["cat", "dog"]})["labels"]
    # the fake's caption is the image's size: identical captions are classified once
    captions = {r.outputs["caption"] for r in results}
    assert fake.batches == [("captioner/caption", 4), ("text/zero_shot", len(captions))]
    assert not fake.calls
    again = await gw.call_model("captioner", "caption", {"image": images[2]})
    assert again[1].cached  # the window stored what it computed


async def test_a_lone_caller_waits_for_no_window_and_a_busy_model_gathers(make):
    rec = MemoryRecorder()
    fake = GatedModels()
    gw = make(fake, observer=Observer(rec), size=2)
    gather = gw.executor.gather
    gather.waits["text"] = 60.0  # longer than the test: a window that waits closes by size
    first = asyncio.ensure_future(embed(gw, "g1"))
    # sent alone, without waiting for its 60 s timer: nothing else was out
    await asyncio.wait_for(fake.arrived.wait(), 30)
    (waited, _), = rec.observed("fusion_router_batch_wait_seconds")
    assert waited < 30
    second = asyncio.ensure_future(embed(gw, "g2"))  # g1 is out: g2's window waits ...
    for _ in range(100):
        if gather._open:
            break
        await asyncio.sleep(0)  # a turn of the loop, not a timed wait
    assert gather._open
    third = asyncio.ensure_future(embed(gw, "g3"))  # ... for g3, from a later turn
    fake.gate.set()
    assert [o for o, _ in await asyncio.gather(first, second, third)] == [
        FakeModels.compute("embed", {"text": t}) for t in ("g1", "g2", "g3")]
    assert fake.batches == [("text/embed", 1), ("text/embed", 2)]
    assert [n for n, _ in rec.observed("fusion_router_batch_size")] == [1, 2]


async def test_a_window_keeps_gathering_while_its_model_has_all_it_can_take(make):
    """One replica takes two windows (one computing, one on its way); a third window whose
    wait is over goes only when one comes back, with whatever gathered meanwhile."""
    fake = GatedModels()
    gw = make(fake)
    gather = gw.executor.gather
    assert gather.outs["text"] == 2
    gather.waits["text"] = 0.001
    out = [asyncio.ensure_future(embed(gw, "k1"))]
    await fake.arrived.wait()  # k1: sent at once (nothing out)

    async def until(condition) -> None:
        for _ in range(10_000):
            if condition():
                return
            await asyncio.sleep(0.001)  # polls a state change; bounded
        raise AssertionError("the gatherer never got there")

    out.append(asyncio.ensure_future(embed(gw, "k2")))  # k2: waits 1 ms, then goes (2 out)
    await until(lambda: sum(gather._running.values()) == 2)
    out.append(asyncio.ensure_future(embed(gw, "k3")))  # k3: waits 1 ms, then must stay
    await until(lambda: any(w.waited for w in gather._open.values()))
    out.append(asyncio.ensure_future(embed(gw, "k4")))  # joins k3's window, still open
    await until(lambda: any(len(w.items) == 2 for w in gather._open.values()))
    assert sum(gather._running.values()) == 2
    fake.gate.set()
    assert [o for o, _ in await asyncio.gather(*out)] == [
        FakeModels.compute("embed", {"text": t}) for t in ("k1", "k2", "k3", "k4")]
    assert fake.batches == [("text/embed", 1), ("text/embed", 1), ("text/embed", 2)]


async def test_cache_policies_form_their_own_windows(make):
    fake = FakeModels()
    gw = make(fake)
    await embed(gw, "p")
    no_cache, no_store, default = await asyncio.gather(
        embed(gw, "p", policy=CachePolicy.from_header("no-cache")),
        embed(gw, "p", policy=CachePolicy.from_header("no-store")),
        embed(gw, "p"))
    assert not no_cache[1].cached and not no_store[1].cached and default[1].cached
    assert sorted(fake.batches) == [("text/embed", 1)] * 3  # first call, no-cache, no-store


async def test_single_http_calls_are_gathered_and_report_their_cache(make):
    fake = FakeModels()
    gw = make(fake)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                                 base_url="http://gw") as client:
        async def post(text):
            return await client.post("/v1/models/text/embed", json={"inputs": {"text": text}})

        first = await asyncio.gather(*(post(t) for t in ("h1", "h2", "h3")))
        assert [r.status_code for r in first] == [200] * 3
        assert [r.json()["outputs"] for r in first] == [
            FakeModels.compute("embed", {"text": t}) for t in ("h1", "h2", "h3")]
        # every call went through the gatherer's list path (how many windows depends on
        # how the ASGI path interleaves the three requests: a lone caller never waits)
        assert sum(n for _, n in fake.batches) == 3 and not fake.calls
        windows = len(fake.batches)
        bad = await post("x" * 20_001)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "inputs.text"
        hit = await post("h2")
        assert hit.headers["x-fusion-cache"] == "hit" and len(fake.batches) == windows


async def test_router_batch_size_wait_and_spans_are_measured(make):
    rec = MemoryRecorder()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    fake = FakeModels()
    gw = make(fake, observer=Observer(rec, tracing), size=3)
    gw.executor.gather.waits["text"] = 60.0  # longer than the test: closed by size or turn
    await asyncio.gather(*(embed(gw, t) for t in ("m1", "m2", "m3")))
    tags = {"model": "text", "task": "embed"}
    assert rec.observed("fusion_router_batch_size") == [(3, tags)]
    (waited, _), = rec.observed("fusion_router_batch_wait_seconds")
    assert 0 <= waited < 30  # closed by size, long before its timer
    windows = [s for s in exporter.get_finished_spans() if s.name == "window text/embed"]
    assert len(windows) == 3  # one per caller


async def test_knob_off_is_the_old_path(make):
    fake = FakeModels()
    gw = make(fake, wait_ms=0)
    assert gw.executor.gather is None
    got = await asyncio.gather(*(embed(gw, t) for t in ("o1", "o2", "o1")))
    assert [o for o, _ in got] == [FakeModels.compute("embed", {"text": t})
                                   for t in ("o1", "o2", "o1")]
    assert fake.calls["text/embed"] == 2 and not fake.batches  # single-flight, single calls


async def test_models_with_the_knob_off_and_streaming_tasks_are_not_gathered(make):
    fake = FakeModels()
    gw = make(fake)
    gather = gw.executor.gather
    assert gather.takes("text", "embed") and gather.takes("captioner", "caption")
    assert not gather.takes("clip", "embed_text")  # knob off for clip
    await gw.call_model("clip", "embed_text", {"text": "t"})
    assert fake.calls["clip/embed_text"] == 1 and not fake.batches


@pytest.mark.parametrize("wait", [-1, 50.5, 1000])
def test_router_batch_wait_ms_is_bounded(wait):
    with pytest.raises(ValidationError) as err:
        ModelConfig.model_validate({"name": "t", "family": "text", "source": "tiny:x",
                                    "router_batch_wait_ms": wait})
    assert "router_batch_wait_ms" in str(err.value)


# -- through the real replica class (``ServedModel.call_many``, without Ray) ------------------

class _Picky(WeightlessBackend):
    family = "text"
    runs: list[int] = []

    def prepare(self, task, inputs):
        item = super().prepare(task, inputs)
        if item["text"].startswith("bad"):
            raise BadInput("text is not usable", field="text")
        return item

    def run(self, task, items, progress=None):
        self.runs.append(len(items))
        return [{"embedding": [float(len(it["text"]))]} for it in items]


class _PickyDeployment(ServedModel):
    backend_cls = _Picky


class ServedClient:
    """The gateway's model client straight onto one replica object (what a handle reaches)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served

    async def info(self, model):
        return self.served.info()

    async def call_many(self, model, task, items):
        return await self.served.call_many(task, items)


async def test_the_replicas_own_item_error_reaches_only_its_caller(make):
    _Picky.runs = []
    cfg = ModelConfig.model_validate({"name": "text", "family": "text", "source": "tiny:x"})
    gw = make(ServedClient(_PickyDeployment(cfg.model_dump(mode="json"))))
    texts = ["ok", "bad one", "fine", "bad two", "good"]
    got = await asyncio.gather(*(embed(gw, t) for t in texts))
    for text, answer in zip(texts, got, strict=True):
        if text.startswith("bad"):
            assert isinstance(answer, BadInput), answer
            assert (answer.field, answer.message) == ("inputs.text", "text is not usable")
        else:
            assert answer[0] == {"embedding": [float(len(text))]}
    assert _Picky.runs == [3]  # the replica refused before running; the rest ran once
