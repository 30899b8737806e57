"""Redis down, slow, flushed or absent: requests still succeed, uncached, and caching resumes.

Each test uses a dedicated throwaway redis-server that it may stop, pause or flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from fusion.cache import RedisBackend, StepCache, lock_key
from tests.redis_server import RedisServer, RedisUnavailable, free_port

pytestmark = pytest.mark.redis  # a redis-server of its own (RedisServer)

FAST_S = 0.05  # the production default of redis_timeout_s
RETRY_AFTER_S = 0.2


@pytest.fixture(scope="module")
def server():
    try:
        srv = RedisServer().start()
    except RedisUnavailable as exc:
        pytest.fail(f"cannot start redis-server: {exc}")
    yield srv
    srv.stop()


@pytest.fixture
async def make(server: RedisServer) -> Callable[..., StepCache]:
    """``make(timeout_s)``: a StepCache on the dedicated server; same namespace each call."""
    server.start()
    ns = "t" + uuid.uuid4().hex[:12]
    made: list[StepCache] = []

    def factory(timeout_s: float = FAST_S) -> StepCache:
        backend = RedisBackend(server.url, timeout_s=timeout_s, retry_after_s=RETRY_AFTER_S)
        made.append(StepCache(backend, namespace=ns, lock_ttl_ms=2000))
        return made[-1]

    yield factory
    for cache in made:
        await cache.aclose()
    server.start()


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "fusion.cache" and r.levelno == logging.WARNING]


async def _compute_n(n: int) -> dict:
    return {"n": n, "blob": b"\x00" * 16}


async def _until_cached(cache: StepCache, key: str, within_s: float = 5.0) -> None:
    """Call until a read is a hit (the backend is healthy and caching)."""
    deadline = time.monotonic() + within_s
    while not (await cache.get_or_compute(key, lambda: _compute_n(1)))[1].cached:
        assert time.monotonic() < deadline, "caching did not work within the deadline"
        await asyncio.sleep(0.05)


async def test_redis_stopped_mid_run_then_back(server: RedisServer, make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fusion.cache")
    cache = make(timeout_s=0.25)
    key = cache.step_key("fp", "task", {"x": 1})
    await _until_cached(cache, key)
    caplog.clear()

    server.stop()
    slowest = 0.0
    for i in range(30):
        started = time.monotonic()
        k = key if i % 2 else cache.step_key("fp", "task", {"x": i})
        value, outcome = await cache.get_or_compute(k, lambda i=i: _compute_n(i))
        slowest = max(slowest, time.monotonic() - started)
        assert value["n"] == i and not outcome.cached
        await asyncio.sleep(0.02)  # spans several breaker periods: probes fail quietly
    # refused connections fail fast and the breaker skips the rest: no call waits past one
    # command's hard deadline (1 s here), let alone the pool's or the OS's connect timeouts
    assert slowest < cache.backend.deadline_s + 1.0
    assert await cache.get(key) is None and not await cache.put(key, {"v": 1})
    assert await cache.clear() == 0
    with pytest.raises(Exception, match="redis"):
        await cache.clear(strict=True)
    s = cache.stats()
    assert s["healthy"] is False and s["total"]["errors"] >= 30
    assert len(_warnings(caplog)) == 1  # one warning for the whole outage

    server.start()
    await _until_cached(cache, key)  # no restart of the gateway needed
    assert cache.stats()["healthy"] is True
    assert any(r.levelno == logging.INFO and "again" in r.getMessage()
               for r in caplog.records if r.name == "fusion.cache")


async def test_slow_redis_is_bounded(server: RedisServer, make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fusion.cache")
    # 0.25 s, not the 50 ms default: the warm-up against a healthy server on a loaded machine
    # must not open the breaker (it would then skip Redis quietly and log nothing)
    cache = make(timeout_s=0.25)
    await _until_cached(cache, cache.step_key("fp", "task", {"warm": True}))
    caplog.clear()
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", 5000, "ALL")  # every command stalls 5 s
        timings = []
        for i in range(5):
            started = time.monotonic()
            value, outcome = await cache.get_or_compute(
                cache.step_key("fp", "task", {"i": i}), lambda i=i: _compute_n(i))
            timings.append(time.monotonic() - started)
            assert value["n"] == i and not outcome.cached
        # each call: at most one command up to its hard deadline (1 s), then the breaker
        # skips Redis; none waits out the pause
        assert max(timings) < 3.0, timings
        assert len(_warnings(caplog)) == 1
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()


async def test_flushed_redis_recomputes_and_frees_locks(server: RedisServer, make) -> None:
    cache = make(timeout_s=1.0)
    key = cache.step_key("fp", "task", {"f": 1})
    calls = 0

    async def compute() -> dict:
        nonlocal calls
        calls += 1
        return {"v": calls}

    await cache.get_or_compute(key, compute)
    # a replica holds the lock for the key when someone flushes the dedicated server
    await cache.backend.acquire(lock_key(cache.namespace, key), "other-replica", 60_000)
    admin = redis.Redis.from_url(server.url)
    try:
        admin.flushall()
    finally:
        admin.close()
    started = time.monotonic()
    value, outcome = await cache.get_or_compute(key, compute)
    # the flushed lock is not waited for (that would take the 8 s wait timeout)
    assert value == {"v": 2} and not outcome.cached
    assert time.monotonic() - started < cache.wait_timeout_s / 2
    assert (await cache.get_or_compute(key, compute))[1].cached
    assert cache.stats()["total"]["errors"] == 0


async def test_redis_absent_from_the_start(caplog) -> None:
    caplog.set_level(logging.INFO, logger="fusion.cache")
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_s=FAST_S,
                           retry_after_s=RETRY_AFTER_S)
    events: list[tuple] = []
    cache = StepCache(backend, namespace="absent", on_event=lambda *e: events.append(e))
    try:
        results = await asyncio.gather(*(
            cache.get_or_compute(cache.step_key("fp", "t", {"i": i % 4}),
                                 lambda i=i: _compute_n(i % 4)) for i in range(40)))
        assert [v["n"] for v, _ in results] == [i % 4 for i in range(40)]
        assert len(_warnings(caplog)) == 1
        assert ("healthy", {}, 0.0) in events
        assert cache.stats()["healthy"] is False
    finally:
        await cache.aclose()


async def test_cross_replica_waiter_survives_outage(server: RedisServer, make) -> None:
    """Redis goes away while one replica computes: the other stops waiting and computes."""
    owner_cache, waiter_cache = make(timeout_s=0.25), make(timeout_s=0.25)
    key = owner_cache.step_key("fp", "task", {"outage": 1})
    calls = 0
    computing, stopped = asyncio.Event(), asyncio.Event()

    async def compute() -> dict:
        nonlocal calls
        calls += 1
        computing.set()
        await stopped.wait()  # the owner computes until Redis is gone
        return {"ok": True}

    refused = asyncio.Event()  # the waiter found the owner's lock held
    acquire = waiter_cache.backend.acquire

    async def watched(*args) -> bool:
        ok = await acquire(*args)
        if not ok:
            refused.set()
        return ok

    waiter_cache.backend.acquire = watched  # type: ignore[method-assign]
    owner = asyncio.ensure_future(owner_cache.get_or_compute(key, compute))
    await asyncio.wait_for(computing.wait(), 5)
    waiter = asyncio.ensure_future(waiter_cache.get_or_compute(key, compute))
    await asyncio.wait_for(refused.wait(), 5)
    server.stop()
    stopped.set()
    results = await asyncio.wait_for(asyncio.gather(owner, waiter), 5)
    assert all(v == {"ok": True} for v, _ in results)
    assert calls in (1, 2)


async def test_one_pool_no_per_request_connects(server: RedisServer, make) -> None:
    admin = redis.Redis.from_url(server.url)
    before = admin.info("stats")["total_connections_received"]
    cache = make(timeout_s=1.0)
    for i in range(100):
        await cache.get_or_compute(cache.step_key("fp", "t", {"i": i % 10}),
                                   lambda i=i: _compute_n(i % 10))
    await asyncio.gather(*(cache.get_or_compute(cache.step_key("fp", "t", {"c": i}),
                                                lambda i=i: _compute_n(i)) for i in range(20)))
    try:
        ours = [c for c in admin.client_list() if c.get("name") == "fusion-cache"]
        opened = admin.info("stats")["total_connections_received"] - before
    finally:
        admin.close()
    # 100 sequential calls reuse one pooled connection; a burst of 20 opens a few more
    assert 1 <= len(ours) <= 21 and opened <= 21


async def test_restart_under_a_full_pool_costs_one_outage(server: RedisServer, make) -> None:
    """Two replicas with 64 pooled connections each; Redis restarts; the first request trips
    the breaker, narrow traffic recovers, then one 64-wide burst: no second outage (the dead
    connections were dropped at the trip), and each distinct request is computed once across
    both replicas (coalescing through Redis works again)."""
    a, b = make(timeout_s=1.0), make(timeout_s=1.0)
    for cache in (a, b):  # fill each pool: 64 commands in flight at once
        await asyncio.gather(*(cache.backend.get(f"fill:{i}") for i in range(64)))
        assert len(cache.backend._pool._available_connections) == 64
    server.stop()
    server.start()
    for cache in (a, b):
        await _until_cached(cache, cache.step_key("fp", "warm", {"restart": 1}))
        assert cache.backend.outages <= 1
    calls: dict[int, int] = {}

    async def compute(i: int) -> dict:
        calls[i] = calls.get(i, 0) + 1
        await asyncio.sleep(0.05)  # model time: the twin finds the lock (or, later, the value)
        return {"n": i}

    results = await asyncio.gather(*(
        cache.get_or_compute(cache.step_key("fp", "burst", {"i": i}), lambda i=i: compute(i))
        for i in range(32) for cache in (a, b)))
    assert [v for v, _ in results] == [{"n": i} for i in range(32) for _ in (a, b)]
    assert a.backend.outages <= 1 and b.backend.outages <= 1
    assert a.backend.healthy and b.backend.healthy
    assert calls == {i: 1 for i in range(32)}, "a request was computed more than once"
