"""Admission control and deadlines without HTTP: limits, Retry-After from the drain rate (on a
fake clock, so the figures are exact), hooks, config validation, and a step refused uncalled
when its deadline has passed."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from fusion.config import ModelConfig, RouterConfig
from fusion.core.admission import (
    DEFAULT_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    Admission,
    DrainRate,
    parse_request_timeout,
    retry_after_s,
)
from fusion.core.executor import Executor
from fusion.core.gateway import Gateway, served_tasks
from fusion.errors import Overloaded, SpecError, StepTimeout
from tests.fakes import FakeModels, fake_config


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
