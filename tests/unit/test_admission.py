"""Admission control and deadlines: limits, Retry-After from the drain rate (on a fake clock,
so the figures are exact), hooks, config validation, a step refused uncalled when its deadline
has passed, and model queues: a pipeline refused before its first step when a later step's
model is full (in-process over HTTP for the 503 a client sees)."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest
from pydantic import ValidationError

from fusion.config import AppConfig, ModelConfig, RouterConfig
from fusion.core.admission import (
    DEFAULT_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    Admission,
    DrainRate,
    ModelQueue,
    model_queues,
    parse_request_timeout,
    retry_after_s,
)
from fusion.core.executor import Executor
from fusion.core.gateway import Gateway, served_tasks
from fusion.errors import Overloaded, SpecError, StepTimeout
from fusion.http.app import create_api
from tests.fakes import FAKE_MODELS, FakeModels, fake_config, png

NO_STORE = {"Cache-Control": "no-store"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drain_rate_counts_completions_in_its_window():
    clock = Clock()
    rate = DrainRate(window_s=10, clock=clock)
    assert rate.rate() is None
    for _ in range(5):
        rate.record()
        clock.now += 0.5
    assert rate.rate() == pytest.approx(5 / 2.5)
    clock.now += 20  # all fell out of the window: no estimate rather than a stale one
    assert rate.rate() is None


def test_retry_after_is_backlog_over_rate_and_bounded():
    assert retry_after_s(4, 2.0) == pytest.approx(2.0)
    assert retry_after_s(1, 1000.0) == pytest.approx(0.05)  # never "retry now"
    assert retry_after_s(10_000, 1.0) == MAX_RETRY_AFTER_S
    assert retry_after_s(3, None) == DEFAULT_RETRY_AFTER_S


def test_admission_refuses_past_the_total_and_per_key_limits():
    clock = Clock()
    adm = Admission(2, {"slow": 1}, clock=clock)
    seen: list[tuple[str, str]] = []
    adm.listeners.append(lambda kind, key, detail: seen.append((kind, key)))
    with adm.admit("slow"):
        with pytest.raises(Overloaded, match="'slow' is at its limit of 1"), adm.admit("slow"):
            pass
        with adm.admit("fast"):
            assert adm.in_flight == 2 and adm.by_key == {"slow": 1, "fast": 1}
            with pytest.raises(Overloaded, match="limit of 2"):
                adm.check("other")
    assert adm.in_flight == 0 and adm.by_key == {}
    assert seen == [("rejected", "slow"), ("rejected", "other")] and adm.rejected == 2


def test_retry_after_follows_the_observed_drain_rate():
    clock = Clock()
    adm = Admission(1, clock=clock)
    for _ in range(4):  # four requests, 0.25 s each: 4 per second
        with adm.admit("p"):
            clock.now += 0.25
    with adm.admit("p"), pytest.raises(Overloaded) as refused:
        adm.check("p")
    # 4 completions over the 0.75 s between the first and the check
    assert refused.value.retry_after_s == pytest.approx(1 / (4 / 0.75))


def test_a_full_model_queue_gets_retry_after_from_the_models_rate():
    clock = Clock()
    adm = Admission(10, clock=clock)
    for _ in range(3):
        adm.model_done("diffusion")
        clock.now += 1.0  # one image a second
    err = adm.model_full("diffusion", queued=6)
    assert err.status == 503 and "'diffusion'" in err.message
    assert err.retry_after_s == pytest.approx(6 / (3 / 3.0))


def test_a_hook_that_raises_does_not_turn_a_refusal_into_a_crash():
    adm = Admission(1)
    adm.listeners.append(lambda *a: 1 / 0)
    with adm.admit("a"), pytest.raises(Overloaded):
        adm.check("b")


@pytest.mark.parametrize("value, seconds", [(None, None), ("", None), ("2.5", 2.5), ("30", 30)])
def test_request_timeout_header(value, seconds):
    assert parse_request_timeout(value) == seconds


async def test_a_step_whose_deadline_has_passed_is_refused_uncalled():
    cfg = fake_config()
    fake = FakeModels()
    adm = Admission(10)
    executor = Executor(fake, served_tasks(cfg), fake.info, admission=adm)

    async def fingerprint(model: str) -> str:
        return "fp"

    executor.fingerprint = fingerprint
    with pytest.raises(StepTimeout) as err:
        await executor.call_model("text", "embed", {"text": "x"}, step="embed",
                                  deadline=time.monotonic() - 0.001)
    assert err.value.field == "steps.embed" and "could not start" in err.value.message
    assert sum(fake.calls.values()) == 0 and adm.expired == 1
    out, _ = await executor.call_model("text", "embed", {"text": "x"},
                                       deadline=time.monotonic() + 60)
    assert len(out["embedding"]) == 8  # time left: the call runs


def test_model_queue_defaults_follow_the_batch_size_and_are_validated():
    base = {"name": "m", "family": "diffusion", "source": "tiny:diffusion"}
    one = ModelConfig.model_validate({**base, "max_batch_size": 1})
    assert (one.max_ongoing_requests, one.max_queued_requests) == (2, 8)
    eight = ModelConfig.model_validate({**base, "max_batch_size": 8})
    assert (eight.max_ongoing_requests, eight.max_queued_requests) == (16, 64)
    own = ModelConfig.model_validate({**base, "max_ongoing_requests": 4,
                                      "max_queued_requests": -1, "max_batch_size": 2})
    assert (own.max_ongoing_requests, own.max_queued_requests) == (4, -1)
    with pytest.raises(ValidationError, match="at least max_batch_size"):
        ModelConfig.model_validate({**base, "max_batch_size": 8, "max_ongoing_requests": 4})
    with pytest.raises(ValidationError, match="max_queued_requests"):
        ModelConfig.model_validate({**base, "max_queued_requests": 0})


def test_model_deployment_gets_the_queue_bounds():
    from fusion.serve.app import model_deployment

    cfg = ModelConfig.model_validate({"name": "d", "family": "diffusion",
                                      "source": "tiny:diffusion", "max_batch_size": 1,
                                      "max_queued_requests": 3})
    deployment = model_deployment(cfg, None)._bound_deployment
    assert (deployment.max_ongoing_requests, deployment.max_queued_requests) == (2, 3)


def test_router_limits_are_validated():
    with pytest.raises(ValidationError, match="must not exceed max_ongoing_requests"):
        RouterConfig(max_in_flight=300, max_ongoing_requests=256)
    with pytest.raises(ValidationError, match="at least 1"):
        RouterConfig(pipeline_max_in_flight={"embed": 0})
    with pytest.raises(SpecError, match="unknown pipeline"):
        Gateway(fake_config(router={"pipeline_max_in_flight": {"nope": 1}}), FakeModels())


def test_a_pipeline_spec_may_bound_itself_and_the_router_config_overrides_it():
    pipe = {"name": "bounded", "max_in_flight": 3, "inputs": {"text": "text"},
            "steps": {"e": {"model": "text", "task": "embed", "with": {"text": "$inputs.text"}}},
            "outputs": {"embedding": "$steps.e.embedding"}}
    gw = Gateway(fake_config(pipelines=[pipe]), FakeModels())
    assert gw.admission.limits == {"bounded": 3}
    gw = Gateway(fake_config(pipelines=[pipe],
                             router={"pipeline_max_in_flight": {"bounded": 1, "embed": 2}}),
                 FakeModels())
    assert gw.admission.limits == {"bounded": 1, "embed": 2}
    with pytest.raises(SpecError, match="max_in_flight"):
        Gateway(fake_config(pipelines=[{**pipe, "max_in_flight": 0}]), FakeModels())


# ---- model queues: a pipeline admitted as a whole ----------------------------------------

def test_model_queues_follow_the_serve_config():
    base = {"family": "text", "source": "tiny:text-embedding", "max_batch_size": 1}
    models = [ModelConfig.model_validate({**base, **m}) for m in (
        {"name": "one", "max_ongoing_requests": 2, "max_queued_requests": 3, "num_replicas": 2},
        {"name": "scaled", "max_ongoing_requests": 2, "max_queued_requests": 3,
         "autoscaling": {"min_replicas": 1, "max_replicas": 4}},
        {"name": "open", "max_queued_requests": -1},
        {"name": "a", "bundle": "edge", "max_ongoing_requests": 1, "max_queued_requests": 1},
        {"name": "b", "bundle": "edge", "max_ongoing_requests": 2, "max_queued_requests": 2})]
    queues = model_queues(models)
    assert queues["one"] == ModelQueue("one", 3 + 2 * 2)  # its queue + every replica's slots
    assert queues["scaled"] == ModelQueue("scaled", 3 + 2 * 4)  # at most max_replicas run
    assert queues["open"].capacity is None  # -1: Serve never refuses it
    assert queues["a"] == queues["b"] == ModelQueue("edge", (1 + 2) + (1 + 2))  # one queue
    adm = Admission(10, model_queues=queues)
    held = adm.reserve({f"s{i}": "a" if i % 2 else "b" for i in range(6)})
    with pytest.raises(Overloaded, match="model 'b' is at its queue limit"):
        adm.reserve({"s": "b"})  # a bundle's members fill one queue together
    held.release_all()
    assert adm.model_held == {}


def test_identical_work_shares_one_slot_and_a_pipeline_is_checked_for_every_model():
    adm = Admission(10, model_queues={"text": ModelQueue("text", 1)},
                    pipeline_models={"classify": {"cls": "text"}, "draw": {"gen": "diffusion"}})
    first = adm.reserve({"": "text"}, shared={"": "same-call"})
    second = adm.reserve({"": "text"}, shared={"": "same-call"})  # joins the first's call
    assert adm.model_held == {"text": 1}
    with pytest.raises(Overloaded, match="model 'text' is at its queue limit"):
        adm.reserve({"": "text"}, shared={"": "another-call"})
    with pytest.raises(Overloaded, match="pipeline 'classify' \\(step 'cls'\\) was refused "
                                         "before any step ran"):
        adm.check("classify")
    adm.check("draw")  # a pipeline that does not need text is admitted
    first.release_all()
    assert adm.model_held == {"text": 1}  # the second still holds the shared slot
    second.release_all()
    second.release_all()  # twice is harmless
    assert adm.model_held == {} and adm.rejected == 2
    adm.reserve({"": "text"}, shared={"": "another-call"}).release_all()


def test_serve_refusing_a_model_refuses_new_work_for_it_until_a_call_finishes():
    clock = Clock()
    adm = Admission(10, clock=clock, model_queues={"text": ModelQueue("text", None)})
    for _ in range(3):
        adm.model_done("text")
        clock.now += 0.5  # two calls a second
    err = adm.model_full("text", queued=4)  # another router replica filled Serve's queue
    with pytest.raises(Overloaded, match="Serve refused a call") as refused:
        adm.reserve({"cls": "text"}, "classify")
    assert refused.value.retry_after_s == pytest.approx(1 / (3 / 1.5))
    adm.model_done("text")  # one of its calls finished: there is room again
    adm.reserve({"cls": "text"}, "classify").release_all()
    adm.model_full("text")
    clock.now += err.retry_after_s + 0.01  # or its Retry-After passed
    adm.reserve({"cls": "text"}, "classify").release_all()


class HeldEmbeds(FakeModels):
    """``text/embed`` calls wait for ``release``; ``waiting`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def call(self, model, task, inputs):
        if task == "embed":
            self.waiting += 1
            await self.release.wait()
        return await super().call(model, task, inputs)


async def test_over_http_a_pipeline_whose_later_model_is_full_is_503_before_step_one():
    # text: 1 running + 1 queued per router replica; two held embeds fill it
    models = [dict(m, max_batch_size=1, max_ongoing_requests=1, max_queued_requests=1)
              if m["name"] == "text" else dict(m) for m in FAKE_MODELS]
    fake = HeldEmbeds()
    gw = Gateway(AppConfig.model_validate({"models": models}), fake)
    transport = httpx.ASGITransport(app=create_api(lambda: gw))
    body = {"inputs": {"image": base64.b64encode(png()).decode(), "labels": ["a", "b"]}}
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as c:
        held = [asyncio.ensure_future(c.post("/v1/models/text/embed", headers=NO_STORE,
                                             json={"inputs": {"text": f"t{i}"}}))
                for i in range(2)]
        for _ in range(10_000):
            if fake.waiting == 2:
                break
            await asyncio.sleep(0)
        assert fake.waiting == 2
        r = await c.post("/v1/pipelines/caption_then_classify", json=body, headers=NO_STORE)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "overloaded" and "model 'text'" in err["message"]
        assert "before any step ran" in err["message"]
        assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) > 0
        r = await c.post("/v1/pipelines/caption_then_classify?stream=true", json=body)
        assert r.status_code == 503 and "retry-after" in r.headers  # plain 503, no stream
        assert fake.calls["captioner/caption"] == 0  # step one never spent model time
        fake.release.set()
        assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200]
        r = await c.post("/v1/pipelines/caption_then_classify", json=body, headers=NO_STORE)
        assert r.status_code == 200, r.text
    assert fake.calls["captioner/caption"] == 1 and gw.admission.model_held == {}
