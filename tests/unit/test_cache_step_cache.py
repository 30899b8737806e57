"""StepCache against MemoryBackend and a real RedisBackend: the same tests for both."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import uuid
from collections.abc import Callable

import pytest

from fusion.cache import (
    CacheBackend,
    CacheUnavailable,
    MemoryBackend,
    Outcome,
    RedisBackend,
    StepCache,
    encode,
    lock_key,
)
from fusion.config import CacheConfig
from tests.redis_server import RedisUnavailable, redis_url

VALUE = {"text": "a cat", "image": b"\x89PNG\x00\xff" * 50,
         "labels": [{"label": "cat", "score": 0.75}, {"label": "dog", "score": 0.25}],
         "nested": [[1, [2.5, [b"deep", None, True]]], {"k": []}], "n": 7}


@pytest.fixture(scope="module")
def shared_redis_url() -> str:
    try:
        return redis_url()
    except RedisUnavailable as exc:
        pytest.fail(f"no Redis answers and none could be started: {exc}")


async def _until(read, expected, within_s: float) -> None:
    """Poll ``await read()`` until it returns ``expected`` (an event no wall-clock margin can
    miss on a loaded machine); fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while await read() != expected:
        assert time.monotonic() < deadline, f"still not {expected!r} after {within_s}s"
        await asyncio.sleep(0.02)


class Counter:
    """A compute function that counts its calls and can be slow or fail."""

    def __init__(self, value: dict | None = None, delay: float = 0.0,
                 error: Exception | None = None) -> None:
        self.value = VALUE if value is None else value
        self.delay, self.error, self.calls = delay, error, 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(params=["memory", "redis"])
async def make(request) -> Callable[..., StepCache]:
    """``make(**kw)`` builds a StepCache in a fresh namespace; ``make(like=c)`` a second
    "replica" of ``c``: same namespace, and for Redis its own backend (own pool)."""
    kind = request.param
    ns = "t" + uuid.uuid4().hex[:12]
    made: list[StepCache] = []

    def factory(like: StepCache | None = None, memory_max_bytes: int = 1 << 24,
                namespace: str | None = None, **kw) -> StepCache:
        if kind == "memory":
            backend: CacheBackend = (like.backend if like is not None
                                     else MemoryBackend(memory_max_bytes))
        else:
            backend = RedisBackend(request.getfixturevalue("shared_redis_url"), timeout_s=2.0)
        cache = StepCache(backend, namespace=namespace or ns, **kw)
        made.append(cache)
        return cache

    factory.kind = kind  # type: ignore[attr-defined]
    yield factory
    for cache in made:
        await cache.clear()
        if kind == "redis":
            await cache.aclose()


def key_of(cache: StepCache, **inputs) -> str:
    return cache.step_key("tiny:test", "caption", inputs or {"image": b"img"})


async def test_miss_then_hit_round_trips_exactly(make) -> None:
    cache = make()
    key, compute = key_of(cache), Counter()
    value, outcome = await cache.get_or_compute(key, compute, labels=("m", "t"))
    assert value == VALUE and outcome == Outcome(cached=False, coalesced=False)
    again, outcome = await cache.get_or_compute(key, compute, labels=("m", "t"))
    assert outcome == Outcome(cached=True, coalesced=False) and compute.calls == 1
    assert again == VALUE and again is not VALUE
    assert type(again["image"]) is bytes and again["nested"][0][1][1][2] is True
    s = cache.stats()
    assert s["total"]["hits"] == 1 and s["total"]["misses"] == 1 and s["total"]["stores"] == 1
    assert s["total"]["bytes_written"] == len(encode(VALUE)) == s["total"]["bytes_read"]
    assert s["by_label"]["m/t"]["hits"] == 1
    assert s["backend"] == make.kind and s["healthy"] is True


async def test_key_changes_recompute(make) -> None:
    cache = make()
    compute = Counter()
    keys = {key_of(cache, image=b"a"), key_of(cache, image=b"b"),
            cache.step_key("tiny:other", "caption", {"image": b"a"}),
            key_of(cache, image=b"a", max_new_tokens=5)}
    for key in keys:
        await cache.get_or_compute(key, compute)
        await cache.get_or_compute(key, compute)
    assert len(keys) == 4 and compute.calls == 4


async def test_ttl_expiry(make) -> None:
    cache = make(ttl_s=60)
    key, compute = key_of(cache), Counter()
    await cache.get_or_compute(key, compute, ttl_s=0.6)  # the step's TTL, not the cache's 60 s
    assert (await cache.get_or_compute(key, compute))[1].cached
    await _until(lambda: cache.get(key), None, within_s=10)  # expires by itself
    assert not (await cache.get_or_compute(key, compute))[1].cached
    assert compute.calls == 2


async def test_lru_eviction_by_bytes() -> None:
    """The in-process LRU only: Redis evicts by its own ``maxmemory`` policy."""
    probe = StepCache(MemoryBackend(1 << 20), namespace="lru")
    one = len(encode(VALUE)) + len(key_of(probe))  # the LRU counts keys and values
    cache = StepCache(MemoryBackend(3 * one), namespace="lru")
    keys = [key_of(cache, image=bytes([i])) for i in range(4)]
    compute = Counter()
    for key in keys[:3]:
        await cache.get_or_compute(key, compute)
    await cache.get_or_compute(keys[0], compute)  # touch: keys[1] is now the oldest
    await cache.get_or_compute(keys[3], compute)  # evicts keys[1]
    assert compute.calls == 4
    assert await cache.get(keys[1]) is None
    assert all([await cache.get(k) is not None for k in (keys[0], keys[2], keys[3])])
    assert cache.backend.nbytes <= 3 * one


async def test_no_cache_recomputes_then_stores(make) -> None:
    cache = make()
    key = key_of(cache)
    await cache.get_or_compute(key, Counter({"v": 1}))
    fresh = Counter({"v": 2})
    value, outcome = await cache.get_or_compute(key, fresh, read=False, write=True)
    assert value == {"v": 2} and outcome == Outcome() and fresh.calls == 1
    value, outcome = await cache.get_or_compute(key, Counter({"v": 3}))
    assert value == {"v": 2} and outcome.cached


async def test_no_store_neither_reads_nor_writes(make) -> None:
    cache = make()
    key = key_of(cache)
    compute = Counter({"v": 1})
    value, outcome = await cache.get_or_compute(key, compute, read=False, write=False)
    assert value == {"v": 1} and not outcome.cached
    assert await cache.get(key) is None  # nothing stored
    await cache.put(key, {"v": "stored"})
    value, outcome = await cache.get_or_compute(key, Counter({"v": 2}), read=False, write=False)
    assert value == {"v": 2} and not outcome.cached  # and nothing read
    assert await cache.get(key) == {"v": "stored"}  # nor overwritten


async def test_size_cap(make) -> None:
    cache = make(max_value_bytes=1000)
    key, compute = key_of(cache), Counter({"image": b"x" * 2000})
    value, _ = await cache.get_or_compute(key, compute)
    assert value == {"image": b"x" * 2000}
    _, outcome = await cache.get_or_compute(key, compute)
    assert not outcome.cached and compute.calls == 2
    assert cache.stats()["total"]["skipped_too_large"] == 2
    assert cache.stats()["total"]["stores"] == 0
    assert not await cache.put(key, {"image": b"x" * 2000})


async def test_unencodable_value_is_returned_not_stored(make) -> None:
    cache = make()
    marker = object()
    value, _ = await cache.get_or_compute(key_of(cache), Counter({"o": marker}))
    assert value["o"] is marker
    assert cache.stats()["total"]["errors"] == 1 and cache.stats()["total"]["stores"] == 0


async def test_64_concurrent_compute_once(make) -> None:
    cache = make()
    key, compute = key_of(cache), Counter(delay=0.05)
    results = await asyncio.gather(*(cache.get_or_compute(key, compute, labels=("m", "t"))
                                     for _ in range(64)))
    assert compute.calls == 1
    assert all(v == VALUE for v, _ in results)
    assert sum(o.coalesced for _, o in results) == 63
    assert sum(not o.coalesced and not o.cached for _, o in results) == 1
    total = cache.stats()["total"]
    assert total["coalesced"] == 63 and total["misses"] == 1 and total["stores"] == 1
    assert cache.stats()["in_flight"] == 0


async def test_two_replicas_compute_once(make) -> None:
    a = make()
    b = make(like=a)
    key = key_of(a)
    assert key == key_of(b)
    compute = Counter(delay=0.1)
    results = await asyncio.gather(*(c.get_or_compute(key, compute)
                                     for _ in range(32) for c in (a, b)))
    assert compute.calls == 1
    assert all(v == VALUE for v, _ in results)
    computed = [o for _, o in results if not o.cached and not o.coalesced]
    assert len(computed) == 1
    # the other replica's first caller waited for the value to land: a coalesced read
    assert sum(c.stats()["total"]["coalesced"] + c.stats()["total"]["hits"]
               for c in (a, b)) == 63


async def test_crashed_owner_is_taken_over(make) -> None:
    cache = make(lock_ttl_ms=300)
    key, compute = key_of(cache), Counter()
    started = time.monotonic()  # before the lock is taken: its TTL cannot end sooner
    # another replica took the lock and died: never stores, never releases
    assert await cache.backend.acquire(lock_key(cache.namespace, key), "dead-owner", 300)
    value, outcome = await cache.get_or_compute(key, compute)
    waited = time.monotonic() - started
    assert value == VALUE and compute.calls == 1 and outcome == Outcome()
    assert 0.29 <= waited < cache.wait_timeout_s  # took over at expiry, not at giving up
    assert (await cache.get_or_compute(key, compute))[1].cached


async def test_owner_heartbeat_keeps_waiters_waiting(make) -> None:
    a = make(lock_ttl_ms=900)
    b = make(like=a, lock_ttl_ms=900)
    key = key_of(a)
    beats = 0
    refresh = a.backend.refresh

    async def counted(*args) -> bool:
        nonlocal beats
        ok = await refresh(*args)
        beats += ok
        return ok

    a.backend.refresh = counted  # type: ignore[method-assign]
    started = asyncio.Event()

    async def slow() -> dict:
        # outlive the lock's TTL: beats come every TTL/3, so four of them take 4/3 of it;
        # without them the lock would expire and the waiter would compute too
        started.set()
        while beats < 4:
            await asyncio.sleep(0.01)
        return VALUE

    first = asyncio.ensure_future(a.get_or_compute(key, slow))
    await asyncio.wait_for(started.wait(), 10)  # a holds the lock and computes
    computed = Counter()
    value, outcome = await b.get_or_compute(key, computed)
    assert value == VALUE and outcome == Outcome(cached=True, coalesced=True)
    assert (await first)[1] == Outcome() and computed.calls == 0


async def test_errors_reach_followers_and_are_not_cached(make) -> None:
    cache = make()
    key = key_of(cache)
    failing = Counter(delay=0.05, error=RuntimeError("model exploded"))
    results = await asyncio.gather(*(cache.get_or_compute(key, failing) for _ in range(8)),
                                   return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "model exploded" for r in results)
    lock = lock_key(cache.namespace, key)
    assert await cache.backend.acquire(lock, "probe", 1000)  # the lock was released
    await cache.backend.release(lock, "probe")
    value, outcome = await cache.get_or_compute(key, Counter())
    assert value == VALUE and not outcome.cached


async def test_cancelled_caller_does_not_cancel_others(make) -> None:
    cache = make()
    key, release = key_of(cache), asyncio.Event()
    compute = Counter()

    async def gated() -> dict:
        await release.wait()  # still computing until both callers are in and one is gone
        return await compute()

    first = asyncio.ensure_future(cache.get_or_compute(key, gated))
    second = asyncio.ensure_future(cache.get_or_compute(key, gated))
    for _ in range(1000):  # until both callers share the one flight
        flight = cache._flights._flights.get(key)
        if flight is not None and flight.waiters == 2:
            break
        await asyncio.sleep(0)
    assert cache._flights._flights[key].waiters == 2
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    value, outcome = await second
    assert value == VALUE and outcome.coalesced and compute.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_last_cancelled_caller_cancels_compute_and_releases(make) -> None:
    cache = make()
    key = key_of(cache)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hangs() -> dict:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    task = asyncio.ensure_future(cache.get_or_compute(key, hangs))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()  # e.g. the executor's step timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 5)
    lock = lock_key(cache.namespace, key)
    deadline = time.monotonic() + 5
    while not await cache.backend.acquire(lock, "probe", 1000):  # released by the owner
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await cache.backend.release(lock, "probe")
    assert cache.stats()["in_flight"] == 0


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("planted", ["pickle", "random", "header"])
async def test_planted_values_are_misses(make, tmp_path, planted: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"pickle": pickle.dumps(_Evil(str(marker))), "random": os.urandom(200),
               "header": encode({"v": 1})[:9] + pickle.dumps(_Evil(str(marker)))}[planted]
    cache = make()
    key, compute = key_of(cache), Counter()
    await cache.backend.set(key, payload, 60)
    assert await cache.get(key) is None
    value, outcome = await cache.get_or_compute(key, compute)
    assert value == VALUE and not outcome.cached and compute.calls == 1
    assert cache.stats()["total"]["corrupt"] == 2  # once by get, once by get_or_compute
    assert not marker.exists()
    assert (await cache.get_or_compute(key, compute))[1].cached  # overwritten by a good value


async def test_get_put_pipeline_results(make) -> None:
    cache = make()
    key = cache.pipeline_key("spec-digest", {"text": "hello"})
    assert await cache.get(key) is None
    assert await cache.put(key, {"outputs": {"caption": "x"}, "raw": b"\x00"})
    assert await cache.get(key) == {"outputs": {"caption": "x"}, "raw": b"\x00"}
    await cache.delete(key)
    assert await cache.get(key) is None
    assert cache.stats()["by_label"]["pipeline/run"]["hits"] == 1


async def test_clear_only_own_namespace(make) -> None:
    a = make()
    b = make(like=a, namespace=a.namespace + "x")
    for i in range(3):
        await a.put(key_of(a, image=bytes([i])), {"i": i})
        await b.put(key_of(b, image=bytes([i])), {"i": i})
    assert await a.clear() == 3
    assert await a.get(key_of(a, image=b"\x00")) is None
    assert await b.get(key_of(b, image=b"\x00")) == {"i": 0}


async def test_on_event_hook(make) -> None:
    events: list[tuple] = []
    cache = make(on_event=lambda name, labels, value: events.append((name, labels, value)))
    key = key_of(cache)
    await cache.get_or_compute(key, Counter(), labels=("captioner", "caption"))
    await cache.get_or_compute(key, Counter(), labels=("captioner", "caption"))
    names = [e[0] for e in events]
    assert names.count("misses") == 1 and names.count("hits") == 1
    assert names.count("stores") == 1
    assert ("hits", {"model": "captioner", "task": "caption"}, 1) in events


async def test_failing_hook_does_not_break_caching(make) -> None:
    def broken(*_):
        raise ValueError("metrics down")

    cache = make(on_event=broken)
    value, _ = await cache.get_or_compute(key_of(cache), Counter())
    assert value == VALUE


async def test_disabled_cache_just_computes(make) -> None:
    cache = make(enabled=False)
    key, compute = key_of(cache), Counter()
    for _ in range(2):
        assert (await cache.get_or_compute(key, compute))[1] == Outcome()
    assert compute.calls == 2 and await cache.get(key) is None
    assert not await cache.put(key, {"v": 1})


async def test_from_config(shared_redis_url: str) -> None:
    mem = StepCache.from_config(CacheConfig(redis_url=None, namespace="cfgtest",
                                            memory_max_bytes=1234, lock_ttl_ms=999))
    assert isinstance(mem.backend, MemoryBackend) and mem.backend.max_bytes == 1234
    assert mem.namespace == "cfgtest" and mem.lock_ttl_ms == 999
    red = StepCache.from_config(CacheConfig(redis_url=shared_redis_url, redis_timeout_s=0.2))
    try:
        assert isinstance(red.backend, RedisBackend) and red.backend.timeout_s == 0.2
        assert red.stats()["backend"] == "redis"
    finally:
        await red.aclose()


async def test_waiter_gives_up_after_wait_timeout(make) -> None:
    cache = make(wait_timeout_s=0.2)
    key, compute = key_of(cache), Counter()
    await cache.backend.acquire(lock_key(cache.namespace, key), "stuck-owner", 10_000)
    started = time.monotonic()
    value, outcome = await cache.get_or_compute(key, compute)
    assert value == VALUE and outcome == Outcome() and compute.calls == 1
    assert 0.15 <= time.monotonic() - started < 2


class _FlakyRelease(MemoryBackend):
    """A backend whose first lock releases fail, as during a short Redis blip."""

    retry_after_s = 0.05

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def release(self, lock_key: str, owner_token: str) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise CacheUnavailable("blip", skipped=True)
        return await super().release(lock_key, owner_token)


async def test_lock_release_retried_after_a_blip() -> None:
    backend = _FlakyRelease(failures=2)
    cache = StepCache(backend, namespace="flaky", lock_ttl_ms=10_000)
    key = cache.step_key("fp", "t", {})
    value, _ = await cache.get_or_compute(key, Counter())
    assert value == VALUE
    lock = lock_key("flaky", key)
    assert not await backend.acquire(lock, "other", 1000)  # still held right after the blip
    deadline = time.monotonic() + 10
    while not await backend.acquire(lock, "other", 1000):
        assert time.monotonic() < deadline, "the lock was not released after the blip"
        await asyncio.sleep(0.02)
