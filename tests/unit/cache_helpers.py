"""Helpers the cache unit tests share (fixtures are in ``tests/unit/conftest.py``)."""

from __future__ import annotations

import asyncio
import inspect
import time

from fusion.cache import RedisBackend, StepCache

VALUE = {"text": "a cat", "image": b"\x89PNG\x00\xff" * 50,
         "labels": [{"label": "cat", "score": 0.75}, {"label": "dog", "score": 0.25}],
         "nested": [[1, [2.5, [b"deep", None, True]]], {"k": []}], "n": 7}


async def until(read, expected, within_s: float = 10.0) -> None:
    """Poll ``read()`` (awaited if it is a coroutine) until it returns ``expected``: an expiry
    or a release is awaited as an event, which no wall-clock margin can miss on a loaded
    machine; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while await _value(read()) != expected:
        assert time.monotonic() < deadline, f"still not {expected!r} after {within_s}s"
        await asyncio.sleep(0.02)


async def _value(result):
    return await result if inspect.isawaitable(result) else result


class ManualClock:
    """A monotonic clock that moves only when the test says: handed to ``MemoryBackend``, it
    puts a TTL's or a lock's expiry exactly where the test looks, on any machine load.
    (Redis keeps its own time: its tests read ``PTTL`` and wait for the expiry itself.)"""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def redis_ttl_ms(backend: RedisBackend, key: str) -> int:
    """The time to live Redis keeps for ``key`` (``PTTL``: -2 missing, -1 none)."""
    return int(await backend.client.pttl(key))


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


def key_of(cache: StepCache, **inputs) -> str:
    return cache.step_key("tiny:test", "caption", inputs or {"image": b"img"})
