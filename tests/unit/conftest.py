"""Fixtures unit tests share: a Redis and StepCache makers for the cache tests; the real tiny
LLM (``llm``) and the fake models with it (``models``) for the LLM route tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from fusion.cache import CacheBackend, MemoryBackend, RedisBackend, StepCache
from tests.redis_server import RedisUnavailable, redis_url
from tests.unit.cache_helpers import ManualClock


@pytest.fixture(scope="module")
def shared_redis_url() -> str:
    try:
        return redis_url()
    except RedisUnavailable as exc:
        pytest.fail(f"no Redis answers and none could be started: {exc}")


@pytest.fixture(params=["memory", "redis"])
async def make_cache(request) -> Callable[..., StepCache]:
    """``make_cache(**kw)`` builds a StepCache in a fresh namespace; ``make_cache(like=c)`` a second
    "replica" of ``c``: same namespace, and for Redis its own backend (own pool).
    ``make_cache.clock``: the ``ManualClock`` of the memory backends, None for Redis."""
    kind = request.param
    ns = "t" + uuid.uuid4().hex[:12]
    made: list[StepCache] = []
    clock = ManualClock()

    def factory(like: StepCache | None = None, memory_max_bytes: int = 1 << 24,
                namespace: str | None = None, **kw) -> StepCache:
        if kind == "memory":
            backend: CacheBackend = (like.backend if like is not None
                                     else MemoryBackend(memory_max_bytes, clock=clock))
        else:
            backend = RedisBackend(request.getfixturevalue("shared_redis_url"), timeout_s=2.0)
        cache = StepCache(backend, namespace=namespace or ns, **kw)
        made.append(cache)
        return cache

    factory.kind = kind  # type: ignore[attr-defined]
    # the memory backends' clock (expiries move with ``advance``); Redis keeps its own time
    factory.clock = clock if kind == "memory" else None  # type: ignore[attr-defined]
    yield factory
    for cache in made:
        await cache.clear()
        if kind == "redis":
            await cache.aclose()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """The real ``tiny:llm`` backend, loaded once per test module."""
    from tests.llm_inprocess import load_tiny_llm

    return load_tiny_llm(str(tmp_path_factory.mktemp("llm-models")))


@pytest.fixture
def models(llm):
    """``LlmModels``: the fakes of the other families plus ``llm``, counting their calls."""
    from tests.llm_inprocess import LlmModels

    return LlmModels(llm)
