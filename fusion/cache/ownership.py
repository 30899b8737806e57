"""The cross-replica half of single-flight: who computes a missing key.

In one process, ``SingleFlight`` already lets one task per key through; that task (the leader)
comes here. It takes the backend lock ``ns:lock:<rest of key>`` (``SET NX PX``): the owner
computes, stores, heartbeats the lock while computing and releases it; the others poll ``get``
with a short exponential backoff until the value lands, take over when the lock frees without
a value, or give up after ``wait_timeout_s`` and compute themselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fusion.cache.interface import CacheUnavailable
from fusion.cache.keys import lock_key
from fusion.cache.stats import Labels
from fusion.cache.value_store import MISS, CallState, Outcome, ValueStore

log = logging.getLogger("fusion.cache")


class LockOwnership:
    """Fills a key once across replicas through the backend lock (see the module doc).

    ``background`` is the owning cache's set of background tasks (late lock releases), so
    that closing the cache cancels them.
    """

    def __init__(self, store: ValueStore, namespace: str, *, lock_ttl_ms: int,
                 wait_timeout_s: float, poll_initial_s: float, poll_max_s: float,
                 background: set[asyncio.Task]) -> None:
        self.store = store
        self.namespace = namespace
        self.lock_ttl_ms = lock_ttl_ms
        self.wait_timeout_s = wait_timeout_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self._background = background

    async def fill(self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float | None,
                   labels: Labels) -> tuple[Any, Outcome]:
        """The leader's path: read; else take the cross-replica lock and compute, or wait."""
        store, stats = self.store, self.store.stats
        call = CallState(labels)
        value = await store.read(key, call)
        if value is not MISS:
            stats.add("hits", labels)
            return value, Outcome(cached=True)
        lock, token = lock_key(self.namespace, key), uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_timeout_s
        delay = self.poll_initial_s
        waited = False
        while not call.degraded:
            if await store.guarded(call, store.backend.acquire(lock, token, self.lock_ttl_ms)):
                try:
                    value = await store.read(key, call)  # it may have landed meanwhile
                    if value is not MISS:
                        # after waiting, it is the other owner's fresh result
                        stats.add("coalesced" if waited else "hits", labels)
                        return value, Outcome(cached=True, coalesced=waited)
                    return await self._compute_and_store(key, compute, ttl, call, lock, token)
                finally:
                    await self._release(lock, token)
            if call.degraded:
                break
            if time.monotonic() >= deadline:
                log.info("waited %.1fs for another replica to compute %s; computing here",
                         self.wait_timeout_s, key)
                break
            waited = True
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.poll_max_s)
            value = await store.read(key, call)
            if value is not MISS:
                stats.add("coalesced", labels)
                return value, Outcome(cached=True, coalesced=True)
        return await self._compute_and_store(key, compute, ttl, call, None, token)

    async def _compute_and_store(self, key: str, compute: Callable[[], Awaitable[Any]],
                                 ttl: float | None, call: CallState, lock: str | None,
                                 token: str) -> tuple[Any, Outcome]:
        self.store.stats.add("misses", call.labels)
        beat = (asyncio.ensure_future(self._heartbeat(lock, token))
                if lock is not None else None)
        try:
            value = await compute()
        finally:
            if beat is not None:
                beat.cancel()
        if not call.degraded:
            await self.store.write(key, value, ttl, call)
        return value, Outcome()

    async def _release(self, lock: str, token: str) -> None:
        """Release the lock; if the backend is unavailable, keep trying in the background for a
        while, so other replicas need not wait for the lock's TTL after a short blip."""
        try:
            await self.store.backend.release(lock, token)
        except CacheUnavailable:
            task = asyncio.ensure_future(self._release_later(lock, token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _release_later(self, lock: str, token: str) -> None:
        backend = self.store.backend
        pause = float(getattr(backend, "retry_after_s", 1.0))
        deadline = time.monotonic() + self.lock_ttl_ms / 1000
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            try:
                await backend.release(lock, token)
                return
            except CacheUnavailable:
                continue

    async def _heartbeat(self, lock: str, token: str) -> None:
        """Keep the owner's lock alive while it computes; a crashed owner stops extending it."""
        interval = self.lock_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.store.backend.refresh(lock, token, self.lock_ttl_ms):
                    return
            except CacheUnavailable:
                continue
