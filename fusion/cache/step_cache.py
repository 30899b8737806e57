"""``StepCache``: read-through cache with single-flight, the object the executor uses.

It decides which path a request takes (in-process single-flight, bypass, whole results, list
look-ups) and keeps the shared statistics; reading and writing values is
``fusion.cache.value_store``'s, and the cross-replica lock protocol ``fusion.cache.ownership``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fusion.cache.backends import CacheBackend, CacheUnavailable, MemoryBackend, RedisBackend
from fusion.cache.keys import KEY_VERSION, check_namespace, pipeline_key, step_key
from fusion.cache.ownership import LockOwnership
from fusion.cache.single_flight import SingleFlight
from fusion.cache.stats import CacheStats, EventHook, Labels, unflatten
from fusion.cache.value_store import MISS, CallState, Outcome, ValueStore

if TYPE_CHECKING:
    from fusion.config import CacheConfig

PIPELINE_LABELS: Labels = ("pipeline", "run")
STATS_FLUSH_S = 1.0  # how often a replica adds its counts to the shared statistics
class StepCache:
    """Content-addressed result cache over a ``CacheBackend``; see ``fusion.cache``."""

    def __init__(self, backend: CacheBackend | None = None, *, namespace: str = "fusion",
                 ttl_s: float | None = 24 * 3600, max_value_bytes: int = 8 * 1024 * 1024,
                 lock_ttl_ms: int = 30_000, enabled: bool = True,
                 on_event: EventHook | None = None, poll_initial_s: float = 0.002,
                 poll_max_s: float = 0.05, wait_timeout_s: float | None = None) -> None:
        self.backend = backend if backend is not None else MemoryBackend()
        self.namespace = check_namespace(namespace)
        self.ttl_s = ttl_s
        self.max_value_bytes = max_value_bytes
        self.lock_ttl_ms = int(lock_ttl_ms)
        self.enabled = enabled
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.wait_timeout_s = (wait_timeout_s if wait_timeout_s is not None
                               else max(1.0, 4 * self.lock_ttl_ms / 1000))
        self._stats = CacheStats(on_event)
        self._flights: SingleFlight[tuple[Any, Outcome]] = SingleFlight()
        self._background: set[asyncio.Task] = set()
        self._store = ValueStore(self.backend, self._stats, max_value_bytes)
        self._ownership = LockOwnership(
            self._store, self.namespace, lock_ttl_ms=self.lock_ttl_ms,
            wait_timeout_s=self.wait_timeout_s, poll_initial_s=poll_initial_s,
            poll_max_s=poll_max_s, background=self._background)
        self._flushed: dict[str, int] = {}  # counters already added to the shared hash
        self._last_flush = 0.0
        self._flush_lock = asyncio.Lock()
        self.backend.on_health_change(self._health_changed)

    @classmethod
    def from_config(cls, cfg: CacheConfig, *, on_event: EventHook | None = None,
                    retry_after_s: float = 1.0) -> StepCache:
        """Redis when ``cfg.redis_url`` (default: ``$REDIS_URL``) is set, else in-process LRU."""
        backend: CacheBackend
        if cfg.enabled and cfg.redis_url:
            backend = RedisBackend(cfg.redis_url, timeout_s=cfg.redis_timeout_s,
                                   retry_after_s=retry_after_s)
        else:
            backend = MemoryBackend(cfg.memory_max_bytes)
        return cls(backend, namespace=cfg.namespace, ttl_s=cfg.ttl_s,
                   max_value_bytes=cfg.max_value_bytes, lock_ttl_ms=cfg.lock_ttl_ms,
                   enabled=cfg.enabled, on_event=on_event)

    # -- keys ---------------------------------------------------------------------------------

    def step_key(self, fingerprint: str, task: str, inputs: Mapping[str, Any]) -> str:
        return step_key(self.namespace, fingerprint, task, inputs)

    def pipeline_key(self, spec_digest: str, inputs: Mapping[str, Any]) -> str:
        return pipeline_key(self.namespace, spec_digest, inputs)

    # -- the executor's entry point -----------------------------------------------------------

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[dict]], *,
                             ttl_s: float | None = None, read: bool = True, write: bool = True,
                             labels: tuple[str, str] = ("model", "task")
                             ) -> tuple[dict, Outcome]:
        """The cached value of ``key``, or ``await compute()`` stored under it.

        ``read=False, write=True`` is ``Cache-Control: no-cache`` (recompute, then store);
        ``read=False, write=False`` is ``no-store``. Only the default (read and write) joins
        in-flight computations: in this process through one shared task per key, across
        replicas through the backend lock. Errors of ``compute`` reach every caller sharing
        it and are never cached. Backend trouble never raises: the value is computed.
        """
        labels = (str(labels[0]), str(labels[1]))
        ttl = self.ttl_s if ttl_s is None else ttl_s
        self._maybe_flush_stats()
        if not self.enabled or not (read and write):
            return await self._direct(key, compute, ttl, read and self.enabled,
                                      write and self.enabled, labels)
        (value, outcome), shared = await self._flights.do(
            key, lambda: self._ownership.fill(key, compute, ttl, labels))
        if shared:
            self._stats.add("coalesced", labels)
            return value, Outcome(cached=outcome.cached, coalesced=True)
        return value, outcome

    async def _direct(self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float | None,
                      read: bool, write: bool, labels: Labels) -> tuple[Any, Outcome]:
        call = CallState(labels)
        if read:
            value = await self._store.read(key, call)
            if value is not MISS:
                self._stats.add("hits", labels)
                return value, Outcome(cached=True)
        self._stats.add("misses", labels)
        value = await compute()
        if write and not call.degraded:
            await self._store.write(key, value, ttl, call)
        return value, Outcome()

    # -- whole results (pipelines) ------------------------------------------------------------

    async def get(self, key: str, *, labels: tuple[str, str] = PIPELINE_LABELS) -> dict | None:
        """The stored value of ``key`` or None (miss, corrupt, backend unavailable)."""
        if not self.enabled:
            return None
        call = CallState((str(labels[0]), str(labels[1])))
        value = await self._store.read(key, call)
        if value is MISS:
            self._stats.add("misses", call.labels)
            return None
        self._stats.add("hits", call.labels)
        return value

    async def put(self, key: str, value: dict, ttl_s: float | None = None, *,
                  labels: tuple[str, str] = PIPELINE_LABELS) -> bool:
        """Store ``value``; False when not stored (too large, unencodable, unavailable)."""
        if not self.enabled:
            return False
        call = CallState((str(labels[0]), str(labels[1])))
        return await self._store.write(key, value, self.ttl_s if ttl_s is None else ttl_s, call)

    async def get_many(self, keys: list[str], *, labels: tuple[str, str] = ("model", "task")
                       ) -> list[Any | None]:
        """The stored values of ``keys`` in order (None for each miss), in one round trip.

        List requests use this instead of ``get_or_compute``: they look up every item at once
        and compute only the misses, as one batch; they do not join in-flight computations.
        """
        self._maybe_flush_stats()  # router windows may be all a replica's traffic
        call = CallState((str(labels[0]), str(labels[1])))
        raws = (await self._store.guarded(call, self.backend.get_many(keys))
                if self.enabled else None)
        values = [self._store.decode(k, r, call) if r is not None else MISS
                  for k, r in zip(keys, raws or [None] * len(keys), strict=True)]
        hits = sum(v is not MISS for v in values)
        for name, n in (("hits", hits), ("misses", len(keys) - hits)):
            if self.enabled and n:
                self._stats.add(name, call.labels, n)
        return [None if v is MISS else v for v in values]

    async def put_many(self, items: list[tuple[str, Any]], ttl_s: float | None = None, *,
                       labels: tuple[str, str] = ("model", "task")) -> int:
        """Store every ``(key, value)`` in one round trip; returns how many were stored."""
        if not self.enabled or not items:
            return 0
        self._maybe_flush_stats()
        call = CallState((str(labels[0]), str(labels[1])))
        encoded = [(k, data) for k, v in items
                   if (data := self._store.encode(k, v, call)) is not None]
        if encoded:
            await self._store.guarded(call, self.backend.set_many(
                encoded, self.ttl_s if ttl_s is None else ttl_s))
        if call.degraded:
            return 0
        self._stats.add("stores", call.labels, len(encoded))
        self._stats.add("bytes_written", call.labels, sum(len(d) for _, d in encoded))
        return len(encoded)

    def count_coalesced(self, labels: tuple[str, str], n: int = 1) -> None:
        """Count callers that shared another's look-up or computation without touching the
        cache (router windows, ``fusion.core.gather``), as single-flight's are counted."""
        if self.enabled:
            self._stats.add("coalesced", (str(labels[0]), str(labels[1])), n)

    async def delete(self, key: str) -> None:
        await self._store.guarded(CallState(PIPELINE_LABELS), self.backend.delete(key))

    async def clear(self, *, strict: bool = False) -> int:
        """Delete every key of this namespace (values and locks); other namespaces stay.

        Returns how many were deleted; 0 when the backend is unavailable, or raises
        ``CacheUnavailable`` then if ``strict``.
        """
        try:
            return await self.backend.clear_namespace(self.namespace)
        except CacheUnavailable:
            self._stats.add("errors", ("admin", "clear"))
            if strict:
                raise
            return 0

    def _maybe_flush_stats(self) -> None:
        """At most once a second, add this replica's new counts to the shared hash (in the
        background: a request never waits for statistics)."""
        if (self.backend.shared and not self._flush_lock.locked()
                and time.monotonic() - self._last_flush >= STATS_FLUSH_S):
            self._last_flush = time.monotonic()
            task = asyncio.create_task(self.flush_stats())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def flush_stats(self) -> bool:
        """Add the counts since the last flush to ``<ns>:v1:stats``; False if unavailable."""
        async with self._flush_lock:
            current = self._stats.flat()
            delta = {k: n - self._flushed.get(k, 0) for k, n in current.items()
                     if n != self._flushed.get(k, 0)}
            try:
                if delta:
                    await self.backend.add_counters(self._stats_key, delta)
            except CacheUnavailable:
                return False
            self._flushed = current
            return True

    async def shared_stats(self) -> dict | None:
        """Counters summed over every replica sharing the backend (``{"total", "by_label"}``),
        or None when the backend is not shared or not answering."""
        if not self.backend.shared or not await self.flush_stats():
            return None
        try:
            return unflatten(await self.backend.read_counters(self._stats_key))
        except CacheUnavailable:
            return None

    @property
    def _stats_key(self) -> str:
        return f"{self.namespace}:{KEY_VERSION}:stats"

    def stats(self) -> dict:
        return {"backend": self.backend.name, "namespace": self.namespace,
                "enabled": self.enabled, "healthy": self.backend.healthy,
                "in_flight": len(self._flights), **self._stats.snapshot()}

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.backend.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    def _health_changed(self, healthy: bool) -> None:
        self._stats.emit("healthy", {}, 1.0 if healthy else 0.0)
