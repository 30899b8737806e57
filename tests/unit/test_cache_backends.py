"""The backend contract, run against MemoryBackend and a real RedisBackend."""

from __future__ import annotations

import uuid

import pytest

from fusion.cache import CacheBackend, MemoryBackend, RedisBackend
from tests.unit.cache_helpers import ManualClock, redis_ttl_ms, until


@pytest.fixture
def ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "redis"])
async def backend(request, ns, clock):
    if request.param == "memory":
        b: CacheBackend = MemoryBackend(1 << 20, clock=clock)
    else:
        b = RedisBackend(request.getfixturevalue("shared_redis_url"), timeout_s=2.0)
    yield b
    await b.clear_namespace(ns)
    await b.aclose()


async def test_get_set_delete(backend: CacheBackend, ns: str) -> None:
    key = f"{ns}:v1:fp:t:abc"
    assert await backend.get(key) is None
    await backend.set(key, b"\x00value\xff", 60)
    assert await backend.get(key) == b"\x00value\xff"
    await backend.set(key, b"other", None)
    assert await backend.get(key) == b"other"
    await backend.delete(key)
    assert await backend.get(key) is None
    await backend.delete(key)  # deleting a missing key is fine


async def test_ttl(backend: CacheBackend, ns: str, clock: ManualClock) -> None:
    short, long = f"{ns}:short", f"{ns}:long"
    await backend.set(short, b"v", 0.75)  # binary fractions: the clock's sums are exact
    await backend.set(long, b"v", 60)
    assert await backend.get(short) == b"v"
    if isinstance(backend, MemoryBackend):  # gone by its TTL, not before
        clock.advance(0.5)
        assert await backend.get(short) == b"v"
        clock.advance(0.25)
        assert await backend.get(short) is None
    else:  # Redis keeps the time: the TTLs it was given, then its own expiry
        assert 0 < await redis_ttl_ms(backend, short) <= 750
        assert 59_000 < await redis_ttl_ms(backend, long) <= 60_000
        await until(lambda: backend.get(short), None)
    assert await backend.get(long) == b"v"


async def test_locks_compare_and_delete(backend: CacheBackend, ns: str) -> None:
    lock = f"{ns}:lock:k"
    assert await backend.acquire(lock, "owner-a", 5000)
    assert not await backend.acquire(lock, "owner-b", 5000)
    assert not await backend.acquire(lock, "owner-a", 5000)  # SET NX: held is held
    assert not await backend.release(lock, "owner-b")  # not the owner: nothing happens
    assert not await backend.refresh(lock, "owner-b", 5000)
    assert await backend.refresh(lock, "owner-a", 5000)
    assert await backend.release(lock, "owner-a")
    assert not await backend.release(lock, "owner-a")
    assert await backend.acquire(lock, "owner-b", 5000)
    assert await backend.release(lock, "owner-b")


async def test_lock_expires(backend: CacheBackend, ns: str, clock: ManualClock) -> None:
    lock = f"{ns}:lock:k"
    assert await backend.acquire(lock, "crashed", 750)
    assert not await backend.acquire(lock, "waiter", 750)
    if isinstance(backend, MemoryBackend):  # held until its TTL, free from then on
        clock.advance(0.5)
        assert not await backend.acquire(lock, "waiter", 750)
        clock.advance(0.25)
        assert await backend.acquire(lock, "waiter", 60_000)
    else:  # SET NX PX 750, then Redis' own expiry
        assert 0 < await redis_ttl_ms(backend, lock) <= 750
        await until(lambda: backend.acquire(lock, "waiter", 60_000), True)
    assert not await backend.release(lock, "crashed")  # a late owner cannot free another's lock
    assert await backend.release(lock, "waiter")


async def test_refresh_keeps_lock_alive(backend: CacheBackend, ns: str,
                                        clock: ManualClock) -> None:
    lock = f"{ns}:lock:k"
    assert await backend.acquire(lock, "a", 750)
    if isinstance(backend, RedisBackend):  # the refresh sets a new PX, past the first one
        assert await backend.refresh(lock, "a", 60_000)
        assert await redis_ttl_ms(backend, lock) > 750
    else:
        for _ in range(3):
            clock.advance(0.5)  # 1.5 s in all: alive only thanks to the refreshes
            assert await backend.refresh(lock, "a", 750)
        clock.advance(0.5)
    assert not await backend.acquire(lock, "b", 400)
    assert await backend.release(lock, "a")


async def test_clear_namespace_only_its_own(backend: CacheBackend, ns: str) -> None:
    other, lookalike = ns + "o", ns + "x"  # 'tabcx:*' must survive clearing 'tabc'
    for i in range(5):
        await backend.set(f"{ns}:v1:fp:t:{i}", b"v", 60)
        await backend.set(f"{other}:v1:fp:t:{i}", b"v", 60)
        await backend.set(f"{lookalike}:v1:fp:t:{i}", b"v", 60)
    await backend.acquire(f"{ns}:lock:v1:fp:t:0", "o", 5000)
    try:
        assert await backend.clear_namespace(ns) >= 5
        assert await backend.get(f"{ns}:v1:fp:t:0") is None
        assert await backend.get(f"{other}:v1:fp:t:0") == b"v"
        assert await backend.get(f"{lookalike}:v1:fp:t:4") == b"v"
        assert await backend.acquire(f"{ns}:lock:v1:fp:t:0", "p", 5000)  # locks went too
        assert await backend.clear_namespace(ns) == 1  # just that new lock
    finally:
        await backend.clear_namespace(other)
        await backend.clear_namespace(lookalike)


async def test_redis_clear_in_batches(shared_redis_url: str, ns: str) -> None:
    backend = RedisBackend(shared_redis_url, timeout_s=1.0, scan_count=100)
    try:
        async with backend.client.pipeline(transaction=False) as pipe:
            for i in range(1500):
                pipe.set(f"{ns}:v1:fp:t:{i}", b"v", ex=60)
            await pipe.execute()
        assert await backend.clear_namespace(ns) == 1500
        assert await backend.clear_namespace(ns) == 0
    finally:
        await backend.aclose()


async def test_memory_lru_bounded_by_bytes() -> None:
    b = MemoryBackend(max_bytes=1000)
    value = b"x" * 240  # 240 + len('k0') = 242 bytes per entry: 4 fit
    for i in range(4):
        await b.set(f"k{i}", value, None)
    assert len(b) == 4 and b.nbytes == 4 * 242
    assert await b.get("k0") == value  # k0 is now the most recent; k1 the least
    await b.set("k4", value, None)
    assert await b.get("k1") is None
    assert [await b.get(f"k{i}") is not None for i in (0, 2, 3, 4)] == [True] * 4
    assert b.nbytes <= 1000 and b.evictions == 1
    await b.set("big", b"y" * 600, None)  # needs 603: evicts the 3 least recently used
    assert b.nbytes <= 1000 and await b.get("big") is not None and len(b) == 2
    await b.set("huge", b"z" * 2000, None)  # never fits: not stored, nothing evicted
    assert await b.get("huge") is None and len(b) == 2
    await b.set("big", b"y", None)  # overwriting accounts for the old size
    assert b.nbytes == sum(len(k) + len(v) for k, (v, _) in b._data.items())


async def test_memory_expired_entries_evicted_first(clock: ManualClock) -> None:
    b = MemoryBackend(max_bytes=300, clock=clock)
    await b.set("old", b"x" * 100, None)
    await b.set("exp", b"x" * 100, 0.25)
    clock.advance(0.25)
    await b.set("new", b"x" * 150, None)
    assert await b.get("old") is not None and await b.get("new") is not None
