"""Single-flight and lock ownership of StepCache, in one process and across "replicas",
against MemoryBackend and a real RedisBackend (the ``make_cache`` fixture, conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fusion.cache import CacheUnavailable, MemoryBackend, Outcome, StepCache, lock_key
from tests.unit.cache_helpers import VALUE, Counter, key_of, until


async def test_64_concurrent_compute_once(make_cache) -> None:
    cache = make_cache()
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


async def test_two_replicas_compute_once(make_cache) -> None:
    a = make_cache()
    b = make_cache(like=a)
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


async def test_crashed_owner_is_taken_over(make_cache) -> None:
    cache = make_cache(lock_ttl_ms=750)
    key, compute = key_of(cache), Counter()
    started = time.monotonic()  # before the lock is taken: its TTL cannot end sooner
    # another replica took the lock and died: never stores, never releases
    assert await cache.backend.acquire(lock_key(cache.namespace, key), "dead-owner", 750)
    tries: list[bool] = []  # the waiter's attempts at the lock
    acquire = cache.backend.acquire

    async def counted(*args) -> bool:
        tries.append(await acquire(*args))
        return tries[-1]

    cache.backend.acquire = counted  # type: ignore[method-assign]
    clock = make_cache.clock
    if clock is not None:  # memory: the lock expires when the test moves the clock
        waiter = asyncio.ensure_future(cache.get_or_compute(key, compute))
        await until(lambda: len(tries) >= 3, True)  # polling the held lock
        assert not waiter.done() and compute.calls == 0
        clock.advance(0.75)
        value, outcome = await waiter
    else:  # Redis expires it by its own clock
        value, outcome = await cache.get_or_compute(key, compute)
        assert time.monotonic() - started >= 0.74
    assert value == VALUE and compute.calls == 1 and outcome == Outcome()
    # took over at expiry (its own attempt at the lock won), not at giving up
    assert tries[-1] and not any(tries[:-1]) and len(tries) >= 2
    assert (await cache.get_or_compute(key, compute))[1].cached


async def test_owner_heartbeat_keeps_waiters_waiting(make_cache) -> None:
    a = make_cache(lock_ttl_ms=900)
    b = make_cache(like=a, lock_ttl_ms=900)
    key = key_of(a)
    beats = 0
    refresh = a.backend.refresh

    async def counted(*args) -> bool:
        nonlocal beats
        if make_cache.clock is not None:  # memory: time moves with the beats (TTL/3 each)
            make_cache.clock.advance(0.3)
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


async def test_errors_reach_followers_and_are_not_cached(make_cache) -> None:
    cache = make_cache()
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


async def test_cancelled_caller_does_not_cancel_others(make_cache) -> None:
    cache = make_cache()
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


async def test_last_cancelled_caller_cancels_compute_and_releases(make_cache) -> None:
    cache = make_cache()
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



async def test_waiter_gives_up_after_wait_timeout(make_cache) -> None:
    cache = make_cache(wait_timeout_s=0.2)
    key, compute = key_of(cache), Counter()
    lock = lock_key(cache.namespace, key)
    await cache.backend.acquire(lock, "stuck-owner", 10_000)
    started = time.monotonic()
    value, outcome = await cache.get_or_compute(key, compute)
    assert value == VALUE and outcome == Outcome() and compute.calls == 1
    assert time.monotonic() - started >= 0.15  # it waited first
    # and gave up: computed while the stuck owner still held the lock
    assert not await cache.backend.acquire(lock, "probe", 1000)


class _FlakyRelease(MemoryBackend):
    """A backend whose lock releases fail until ``back`` is set, as during a Redis blip."""

    retry_after_s = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.back = asyncio.Event()
        self.failed = 0

    async def release(self, lock_key: str, owner_token: str) -> bool:
        if not self.back.is_set():
            self.failed += 1
            raise CacheUnavailable("blip", skipped=True)
        return await super().release(lock_key, owner_token)


async def test_lock_release_retried_after_a_blip() -> None:
    backend = _FlakyRelease()
    cache = StepCache(backend, namespace="flaky", lock_ttl_ms=10_000)
    key = cache.step_key("fp", "t", {})
    value, _ = await cache.get_or_compute(key, Counter())
    assert value == VALUE
    lock = lock_key("flaky", key)
    await until(lambda: backend.failed >= 3, True)  # the release, then retries in the background
    assert not await backend.acquire(lock, "other", 1000)  # still held during the blip
    backend.back.set()
    await until(lambda: backend.acquire(lock, "other", 1000), True)  # released after it
