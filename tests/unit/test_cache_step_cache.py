"""StepCache against MemoryBackend and a real RedisBackend: the same tests for both."""

from __future__ import annotations

import os
import pickle

import pytest

from fusion.cache import MemoryBackend, Outcome, RedisBackend, StepCache, encode
from fusion.config import CacheConfig
from tests.unit.cache_helpers import VALUE, Counter, key_of, redis_ttl_ms, until


async def test_miss_then_hit_round_trips_exactly(make_cache) -> None:
    cache = make_cache()
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
    assert s["backend"] == make_cache.kind and s["healthy"] is True


async def test_key_changes_recompute(make_cache) -> None:
    cache = make_cache()
    compute = Counter()
    keys = {key_of(cache, image=b"a"), key_of(cache, image=b"b"),
            cache.step_key("tiny:other", "caption", {"image": b"a"}),
            key_of(cache, image=b"a", max_new_tokens=5)}
    for key in keys:
        await cache.get_or_compute(key, compute)
        await cache.get_or_compute(key, compute)
    assert len(keys) == 4 and compute.calls == 4


async def test_ttl_expiry(make_cache) -> None:
    cache = make_cache(ttl_s=60)
    key, compute = key_of(cache), Counter()
    await cache.get_or_compute(key, compute, ttl_s=0.75)  # the step's TTL, not the cache's 60 s
    assert (await cache.get_or_compute(key, compute))[1].cached
    clock = make_cache.clock
    if clock is not None:  # the memory backend's clock: exact at the TTL
        clock.advance(0.5)
        assert (await cache.get_or_compute(key, compute))[1].cached
        clock.advance(0.25)
        assert await cache.get(key) is None
    else:  # Redis was given the step's TTL, and expires the value by itself
        assert 0 < await redis_ttl_ms(cache.backend, key) <= 750
        await until(lambda: cache.get(key), None, within_s=10)
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


async def test_no_cache_recomputes_then_stores(make_cache) -> None:
    cache = make_cache()
    key = key_of(cache)
    await cache.get_or_compute(key, Counter({"v": 1}))
    fresh = Counter({"v": 2})
    value, outcome = await cache.get_or_compute(key, fresh, read=False, write=True)
    assert value == {"v": 2} and outcome == Outcome() and fresh.calls == 1
    value, outcome = await cache.get_or_compute(key, Counter({"v": 3}))
    assert value == {"v": 2} and outcome.cached


async def test_no_store_neither_reads_nor_writes(make_cache) -> None:
    cache = make_cache()
    key = key_of(cache)
    compute = Counter({"v": 1})
    value, outcome = await cache.get_or_compute(key, compute, read=False, write=False)
    assert value == {"v": 1} and not outcome.cached
    assert await cache.get(key) is None  # nothing stored
    await cache.put(key, {"v": "stored"})
    value, outcome = await cache.get_or_compute(key, Counter({"v": 2}), read=False, write=False)
    assert value == {"v": 2} and not outcome.cached  # and nothing read
    assert await cache.get(key) == {"v": "stored"}  # nor overwritten


async def test_size_cap(make_cache) -> None:
    cache = make_cache(max_value_bytes=1000)
    key, compute = key_of(cache), Counter({"image": b"x" * 2000})
    value, _ = await cache.get_or_compute(key, compute)
    assert value == {"image": b"x" * 2000}
    _, outcome = await cache.get_or_compute(key, compute)
    assert not outcome.cached and compute.calls == 2
    assert cache.stats()["total"]["skipped_too_large"] == 2
    assert cache.stats()["total"]["stores"] == 0
    assert not await cache.put(key, {"image": b"x" * 2000})


async def test_unencodable_value_is_returned_not_stored(make_cache) -> None:
    cache = make_cache()
    marker = object()
    value, _ = await cache.get_or_compute(key_of(cache), Counter({"o": marker}))
    assert value["o"] is marker
    assert cache.stats()["total"]["errors"] == 1 and cache.stats()["total"]["stores"] == 0


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("planted", ["pickle", "random", "header"])
async def test_planted_values_are_misses(make_cache, tmp_path, planted: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"pickle": pickle.dumps(_Evil(str(marker))), "random": os.urandom(200),
               "header": encode({"v": 1})[:9] + pickle.dumps(_Evil(str(marker)))}[planted]
    cache = make_cache()
    key, compute = key_of(cache), Counter()
    await cache.backend.set(key, payload, 60)
    assert await cache.get(key) is None
    value, outcome = await cache.get_or_compute(key, compute)
    assert value == VALUE and not outcome.cached and compute.calls == 1
    assert cache.stats()["total"]["corrupt"] == 2  # once by get, once by get_or_compute
    assert not marker.exists()
    assert (await cache.get_or_compute(key, compute))[1].cached  # overwritten by a good value


async def test_get_put_pipeline_results(make_cache) -> None:
    cache = make_cache()
    key = cache.pipeline_key("spec-digest", {"text": "hello"})
    assert await cache.get(key) is None
    assert await cache.put(key, {"outputs": {"caption": "x"}, "raw": b"\x00"})
    assert await cache.get(key) == {"outputs": {"caption": "x"}, "raw": b"\x00"}
    await cache.delete(key)
    assert await cache.get(key) is None
    assert cache.stats()["by_label"]["pipeline/run"]["hits"] == 1


async def test_clear_only_own_namespace(make_cache) -> None:
    a = make_cache()
    b = make_cache(like=a, namespace=a.namespace + "x")
    for i in range(3):
        await a.put(key_of(a, image=bytes([i])), {"i": i})
        await b.put(key_of(b, image=bytes([i])), {"i": i})
    assert await a.clear() == 3
    assert await a.get(key_of(a, image=b"\x00")) is None
    assert await b.get(key_of(b, image=b"\x00")) == {"i": 0}


async def test_on_event_hook(make_cache) -> None:
    events: list[tuple] = []
    cache = make_cache(on_event=lambda name, labels, value: events.append((name, labels, value)))
    key = key_of(cache)
    await cache.get_or_compute(key, Counter(), labels=("captioner", "caption"))
    await cache.get_or_compute(key, Counter(), labels=("captioner", "caption"))
    names = [e[0] for e in events]
    assert names.count("misses") == 1 and names.count("hits") == 1
    assert names.count("stores") == 1
    assert ("hits", {"model": "captioner", "task": "caption"}, 1) in events


async def test_failing_hook_does_not_break_caching(make_cache) -> None:
    def broken(*_):
        raise ValueError("metrics down")

    cache = make_cache(on_event=broken)
    value, _ = await cache.get_or_compute(key_of(cache), Counter())
    assert value == VALUE


async def test_disabled_cache_just_computes(make_cache) -> None:
    cache = make_cache(enabled=False)
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


