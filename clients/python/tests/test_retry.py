"""Retries: 503 and connection failures with exponential backoff and jitter; never 4xx."""

from __future__ import annotations

import email.utils
import random
import time

import httpx
import pytest
from conftest import LABELS, MODELS, error_body, pipeline_result, run_async, sse

from fusion_client import (
    AsyncFusionClient,
    BadRequest,
    ConnectionFailed,
    FusionClient,
    Overloaded,
    ServerError,
    Timeout,
)
from fusion_client._core import RetryPolicy

OVERLOADED = httpx.Response(503, json=error_body("overloaded", "busy"))


def test_503_is_retried_then_succeeds(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models", OVERLOADED, OVERLOADED)
    assert [m.name for m in client.models()] == ["captioner", "text"]
    assert gateway.count("GET", "/v1/models") == 3
    assert len(sleeps) == 2


def test_gives_up_after_retries_with_the_server_message(gateway, sleeps):
    gateway.route("GET", "/v1/models", OVERLOADED)
    with FusionClient(transport=gateway.transport, retries=2) as client:
        client._sleep = sleeps.sync
        with pytest.raises(Overloaded) as info:
            client.models()
    assert info.value.message == "busy" and info.value.status == 503
    assert gateway.count("GET", "/v1/models") == 3  # 1 + 2 retries
    assert len(sleeps) == 2


def test_retries_zero_means_one_attempt(gateway, sleeps):
    gateway.route("GET", "/v1/models", OVERLOADED)
    with FusionClient(transport=gateway.transport, retries=0) as client:
        client._sleep = sleeps.sync
        with pytest.raises(Overloaded):
            client.models()
    assert gateway.count("GET", "/v1/models") == 1 and sleeps == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 429, 500, 502, 504])
def test_no_retry_on_other_statuses(gateway, client, sleeps, status):
    gateway.route("GET", "/v1/models", httpx.Response(status, json=error_body("x", "no")))
    with pytest.raises(Exception):  # noqa: B017 - the type is checked in test_errors
        client.models()
    assert gateway.count("GET", "/v1/models") == 1
    assert sleeps == []


def test_retry_after_seconds_is_respected(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models",
                  httpx.Response(503, headers={"Retry-After": "7"}, json=error_body("o", "b")))
    client.models()
    assert sleeps == [7.0]


def test_retry_after_http_date_is_respected(gateway, client, sleeps):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    gateway.queue("GET", "/v1/models", httpx.Response(503, headers={"Retry-After": when}))
    client.models()
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 30


def test_retry_after_is_capped():
    policy = RetryPolicy(max_retry_after=10)
    assert policy.retry_after("3600") == 10
    assert policy.retry_after("garbage") is None
    assert policy.retry_after("-5") == 0


def test_backoff_grows_exponentially_with_bounded_jitter():
    policy = RetryPolicy(retries=10, backoff=0.5, max_backoff=8, rng=random.Random(1))
    for attempt in range(8):
        cap = min(8, 0.5 * 2 ** attempt)
        delays = [policy.backoff_delay(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert policy.backoff_delay(20) <= 8


def test_backoff_sequence_from_the_client(gateway, sleeps):
    gateway.route("GET", "/v1/models", OVERLOADED)
    with FusionClient(transport=gateway.transport, retries=4, backoff=1.0,
                      max_backoff=4.0) as client:
        client._sleep = sleeps.sync
        with pytest.raises(Overloaded):
            client.models()
    caps = [1, 2, 4, 4]
    assert len(sleeps) == 4
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, caps, strict=True))


def test_connection_errors_are_retried(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models", httpx.ConnectError("refused"),
                  httpx.RemoteProtocolError("reset"), httpx.ConnectTimeout("slow"))
    assert len(client.models()) == 2
    assert len(sleeps) == 3


def test_connection_failure_after_retries(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models", *[httpx.ConnectError("refused")] * 4)
    with pytest.raises(ConnectionFailed, match="refused") as info:
        client.models()
    assert info.value.status is None
    assert gateway.count("GET", "/v1/models") == 4 and len(sleeps) == 3


def test_read_timeout_is_not_retried(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models", httpx.ReadTimeout("slow"))
    with pytest.raises(Timeout) as info:
        client.models()
    assert info.value.status is None and info.value.code == "client_timeout"
    assert sleeps == []


def test_pipeline_posts_are_retried_idempotently(gateway, client, sleeps):
    result = pipeline_result({"caption": "c", "labels": LABELS},
                             {"caption": "text", "labels": "labels"})
    gateway.queue("POST", "/v1/pipelines/caption_then_classify", OVERLOADED,
                  httpx.ConnectError("reset"))
    gateway.route("POST", "/v1/pipelines/caption_then_classify", result)
    out = client.run("caption_then_classify", image=b"\x89PNG", labels=["cat"])
    assert out.outputs["caption"] == "c"
    bodies = gateway.bodies()
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]


def test_model_calls_are_retried(gateway, client, sleeps):
    gateway.queue("POST", "/v1/models/text/embed", OVERLOADED)
    gateway.route("POST", "/v1/models/text/embed",
                  {"outputs": {"embedding": [0.1]}, "types": {"embedding": "embedding"}})
    assert client.call("text", "embed", text="hi").outputs == {"embedding": [0.1]}
    assert len(sleeps) == 1


def test_bad_request_is_never_retried_for_posts(gateway, client, sleeps):
    gateway.route("POST", "/v1/pipelines/caption_then_classify",
                  httpx.Response(422, json=error_body("bad_input", "no", "inputs.image")))
    with pytest.raises(BadRequest):
        client.run("caption_then_classify", image=b"x", labels=["a"])
    assert gateway.count("POST", "/v1/pipelines/caption_then_classify") == 1
    assert sleeps == []


def test_async_client_retries_the_same_way(gateway, make_async, sleeps):
    gateway.queue("GET", "/v1/models", OVERLOADED, httpx.ConnectError("refused"))

    async def go():
        async with make_async() as client:
            return await client.models()

    assert len(run_async(go())) == len(MODELS["models"])
    assert len(sleeps) == 2


def test_async_gives_up(gateway, make_async, sleeps):
    gateway.route("GET", "/v1/cache/stats", httpx.Response(500, json=error_body("i", "bug")))
    gateway.queue("GET", "/v1/cache/stats", OVERLOADED)

    async def go():
        async with make_async(retries=1) as client:
            await client.cache_stats()

    with pytest.raises(ServerError, match="bug"):
        run_async(go())
    assert len(sleeps) == 1


def test_negative_retries_rejected():
    with pytest.raises(ValueError):
        FusionClient(retries=-1)


def test_retry_after_ms_is_preferred_over_whole_seconds(gateway, client, sleeps):
    gateway.queue("GET", "/v1/models", httpx.Response(
        503, headers={"Retry-After": "1", "Retry-After-Ms": "250"}, json=error_body("o", "b")))
    client.models()
    assert sleeps == [0.25]
    assert RetryPolicy(max_retry_after=10).retry_after_ms("99999") == 10
    assert RetryPolicy().retry_after_ms("soon") is None


# ---- timeout_s is one budget: a retry sends what is left of it ---------------------------

class Clock:
    """A fake monotonic clock: the client's sleeps advance it, and so does the fake gateway's
    work (``spend``), so the time left each retry sends is exact."""

    def __init__(self) -> None:
        self.now = 50.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def busy_then(clock: Clock, final: httpx.Response, busy: int = 2, spend: float = 0.5,
              retry_after_ms: str = "1500"):
    """A handler: ``busy`` 503s (each after ``spend`` seconds of work), then ``final``;
    records the X-Request-Timeout of every attempt."""
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("x-request-timeout"))
        clock.now += spend
        if len(sent) <= busy:
            return httpx.Response(503, headers={"Retry-After-Ms": retry_after_ms},
                                  json=error_body("overloaded", "busy"))
        return httpx.Response(final.status_code, headers=final.headers, content=final.content)

    return handler, sent


RESULT = httpx.Response(200, json=pipeline_result(
    {"caption": "c", "labels": LABELS}, {"caption": "text", "labels": "labels"}))
RUN = "/v1/pipelines/caption_then_classify"


def timed(client, clock: Clock):
    client._clock, client._sleep = clock, clock.sleep
    return client


def test_a_retry_sends_the_time_left_not_the_original_timeout(gateway):
    clock = Clock()
    handler, sent = busy_then(clock, RESULT)
    gateway.route("POST", RUN, handler)
    with timed(FusionClient(transport=gateway.transport), clock) as client:
        client.run("caption_then_classify", image=b"\x89PNG", labels=["cat"], timeout_s=10)
    # 10 s, then 10 - (0.5 work + 1.5 wait), then 10 - 2 × 2
    assert sent == ["10", "8", "6"] and clock.slept == [1.5, 1.5]


def test_no_retry_when_its_wait_would_use_up_the_time_left(gateway):
    clock = Clock()
    handler, sent = busy_then(clock, RESULT, busy=5, retry_after_ms="1500")
    gateway.route("POST", RUN, handler)
    with timed(FusionClient(transport=gateway.transport), clock) as client, \
            pytest.raises(Overloaded, match="busy"):
        client.run("caption_then_classify", image=b"\x89PNG", labels=["cat"], timeout_s=3.6)
    # the retry gets 3.6 - (0.5 + 1.5) = 1.6 s; after its 503, 1.1 s are left: a 1.5 s wait
    # would outlast them, so that 503 is the answer, at once
    assert sent == ["3.6", "1.6"] and clock.slept == [1.5]


def test_connection_retries_send_the_time_left_too(gateway):
    clock = Clock()
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("x-request-timeout"))
        clock.now += 0.25
        if len(sent) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"outputs": {"embedding": [0.1]}, "types": {
            "embedding": "embedding"}, "model": "text", "task": "embed", "ms": 1.0,
            "cached": False})

    gateway.route("POST", "/v1/models/text/embed", handler)
    with timed(FusionClient(transport=gateway.transport, backoff=1.0, max_backoff=1.0,
                            retries=1), clock) as client:
        client.call("text", "embed", text="x", timeout_s=5)
    assert len(sent) == 2 and sent[0] == "5"
    assert float(sent[1]) == pytest.approx(5 - 0.25 - clock.slept[0], abs=1e-3)


def test_a_stream_retry_sends_the_time_left(gateway):
    clock = Clock()
    stream = httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                            content=sse(("result", RESULT.json())))
    handler, sent = busy_then(clock, stream, busy=1)
    gateway.route("POST", RUN, handler)
    with timed(FusionClient(transport=gateway.transport), clock) as client:
        events = list(client.stream("caption_then_classify", image=b"\x89PNG",
                                    labels=["cat"], timeout_s=4))
    assert events[-1].result.outputs["caption"] == "c" and sent == ["4", "2"]


def test_the_async_client_sends_the_time_left(gateway):
    clock = Clock()
    handler, sent = busy_then(clock, RESULT)
    gateway.route("POST", RUN, handler)

    async def main():
        async with AsyncFusionClient(transport=gateway.transport) as client:
            client._clock, client._sleep = clock, clock.async_sleep
            await client.run("caption_then_classify", image=b"\x89PNG", labels=["cat"],
                             timeout_s=10)

    run_async(main())
    assert sent == ["10", "8", "6"]


def test_without_timeout_s_retries_send_no_deadline(gateway, client, sleeps):
    gateway.queue("POST", RUN, OVERLOADED)
    gateway.route("POST", RUN, RESULT)
    client.run("caption_then_classify", image=b"\x89PNG", labels=["cat"])
    assert [r.headers.get("x-request-timeout") for r in gateway.requests
            if r.method == "POST"] == [None, None]
