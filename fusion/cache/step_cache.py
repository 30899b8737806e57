"""``StepCache``: read-through cache with single-flight, the object the executor uses."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion.cache.backends import CacheBackend, CacheUnavailable, MemoryBackend, RedisBackend
from fusion.cache.codec import CorruptValue, UnencodableValue, decode, encode
from fusion.cache.keys import KEY_VERSION, check_namespace, lock_key, pipeline_key, step_key
from fusion.cache.single_flight import SingleFlight
from fusion.cache.stats import CacheStats, EventHook, Labels, unflatten

if TYPE_CHECKING:
    from fusion.config import CacheConfig

log = logging.getLogger("fusion.cache")

PIPELINE_LABELS: Labels = ("pipeline", "run")
STATS_FLUSH_S = 1.0  # how often a replica adds its counts to the shared statistics
_MISS = object()


@dataclass(frozen=True)
class Outcome:
    """How a value was obtained: ``cached`` — read from the store (not computed for this
    call); ``coalesced`` — shared with another in-flight request (this replica or another)."""

    cached: bool = False
    coalesced: bool = False


class _Call:
    """Per-call state: after the first backend failure the call stops touching the backend."""

    __slots__ = ("labels", "degraded", "corrupt_seen")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.degraded = False
        self.corrupt_seen = False


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
        self._corrupt_logged = False
        self._background: set[asyncio.Task] = set()
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
            key, lambda: self._fill(key, compute, ttl, labels))
        if shared:
            self._stats.add("coalesced", labels)
            return value, Outcome(cached=outcome.cached, coalesced=True)
        return value, outcome

    async def _direct(self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float | None,
                      read: bool, write: bool, labels: Labels) -> tuple[Any, Outcome]:
        call = _Call(labels)
        if read:
            value = await self._read(key, call)
            if value is not _MISS:
                self._stats.add("hits", labels)
                return value, Outcome(cached=True)
        self._stats.add("misses", labels)
        value = await compute()
        if write and not call.degraded:
            await self._write(key, value, ttl, call)
        return value, Outcome()

    async def _fill(self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float | None,
                    labels: Labels) -> tuple[Any, Outcome]:
        """The leader's path: read; else take the cross-replica lock and compute, or wait."""
        call = _Call(labels)
        value = await self._read(key, call)
        if value is not _MISS:
            self._stats.add("hits", labels)
            return value, Outcome(cached=True)
        lock, token = lock_key(self.namespace, key), uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_timeout_s
        delay = self.poll_initial_s
        waited = False
        while not call.degraded:
            if await self._backend(call, self.backend.acquire(lock, token, self.lock_ttl_ms)):
                try:
                    value = await self._read(key, call)  # it may have landed meanwhile
                    if value is not _MISS:
                        # after waiting, it is the other owner's fresh result
                        self._stats.add("coalesced" if waited else "hits", labels)
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
            value = await self._read(key, call)
            if value is not _MISS:
                self._stats.add("coalesced", labels)
                return value, Outcome(cached=True, coalesced=True)
        return await self._compute_and_store(key, compute, ttl, call, None, token)

    async def _compute_and_store(self, key: str, compute: Callable[[], Awaitable[Any]],
                                 ttl: float | None, call: _Call, lock: str | None,
                                 token: str) -> tuple[Any, Outcome]:
        self._stats.add("misses", call.labels)
        beat = (asyncio.ensure_future(self._heartbeat(lock, token))
                if lock is not None else None)
        try:
            value = await compute()
        finally:
            if beat is not None:
                beat.cancel()
        if not call.degraded:
            await self._write(key, value, ttl, call)
        return value, Outcome()

    async def _release(self, lock: str, token: str) -> None:
        """Release the lock; if the backend is unavailable, keep trying in the background for a
        while, so other replicas need not wait for the lock's TTL after a short blip."""
        try:
            await self.backend.release(lock, token)
        except CacheUnavailable:
            task = asyncio.ensure_future(self._release_later(lock, token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _release_later(self, lock: str, token: str) -> None:
        pause = float(getattr(self.backend, "retry_after_s", 1.0))
        deadline = time.monotonic() + self.lock_ttl_ms / 1000
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            try:
                await self.backend.release(lock, token)
                return
            except CacheUnavailable:
                continue

    async def _heartbeat(self, lock: str, token: str) -> None:
        """Keep the owner's lock alive while it computes; a crashed owner stops extending it."""
        interval = self.lock_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.backend.refresh(lock, token, self.lock_ttl_ms):
                    return
            except CacheUnavailable:
                continue

    # -- whole results (pipelines) ------------------------------------------------------------

    async def get(self, key: str, *, labels: tuple[str, str] = PIPELINE_LABELS) -> dict | None:
        """The stored value of ``key`` or None (miss, corrupt, backend unavailable)."""
        if not self.enabled:
            return None
        call = _Call((str(labels[0]), str(labels[1])))
        value = await self._read(key, call)
        if value is _MISS:
            self._stats.add("misses", call.labels)
            return None
        self._stats.add("hits", call.labels)
        return value

    async def put(self, key: str, value: dict, ttl_s: float | None = None, *,
                  labels: tuple[str, str] = PIPELINE_LABELS) -> bool:
        """Store ``value``; False when not stored (too large, unencodable, unavailable)."""
        if not self.enabled:
            return False
        call = _Call((str(labels[0]), str(labels[1])))
        return await self._write(key, value, self.ttl_s if ttl_s is None else ttl_s, call)

    async def get_many(self, keys: list[str], *, labels: tuple[str, str] = ("model", "task")
                       ) -> list[Any | None]:
        """The stored values of ``keys`` in order (None for each miss), in one round trip.

        List requests use this instead of ``get_or_compute``: they look up every item at once
        and compute only the misses, as one batch; they do not join in-flight computations.
        """
        call = _Call((str(labels[0]), str(labels[1])))
        raws = await self._backend(call, self.backend.get_many(keys)) if self.enabled else None
        values = [self._decode(k, r, call) if r is not None else _MISS
                  for k, r in zip(keys, raws or [None] * len(keys), strict=True)]
        hits = sum(v is not _MISS for v in values)
        for name, n in (("hits", hits), ("misses", len(keys) - hits)):
            if self.enabled and n:
                self._stats.add(name, call.labels, n)
        return [None if v is _MISS else v for v in values]

    async def put_many(self, items: list[tuple[str, Any]], ttl_s: float | None = None, *,
                       labels: tuple[str, str] = ("model", "task")) -> int:
        """Store every ``(key, value)`` in one round trip; returns how many were stored."""
        if not self.enabled or not items:
            return 0
        call = _Call((str(labels[0]), str(labels[1])))
        encoded = [(k, data) for k, v in items
                   if (data := self._encode(k, v, call)) is not None]
        if encoded:
            await self._backend(call, self.backend.set_many(
                encoded, self.ttl_s if ttl_s is None else ttl_s))
        if call.degraded:
            return 0
        self._stats.add("stores", call.labels, len(encoded))
        self._stats.add("bytes_written", call.labels, sum(len(d) for _, d in encoded))
        return len(encoded)

    async def delete(self, key: str) -> None:
        await self._backend(_Call(PIPELINE_LABELS), self.backend.delete(key))

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

    async def _backend(self, call: _Call, op: Awaitable[Any], *, count: bool = True) -> Any:
        """Run a backend operation; on failure mark the call degraded and count one error."""
        try:
            return await op
        except CacheUnavailable as exc:
            if count and not call.degraded:
                self._stats.add("errors", call.labels)
            call.degraded = True
            log.debug("cache operation failed: %s", exc)
            return None

    async def _read(self, key: str, call: _Call) -> Any:
        if call.degraded:
            return _MISS
        raw = await self._backend(call, self.backend.get(key))
        if raw is None:
            return _MISS
        return self._decode(key, raw, call)

    def _decode(self, key: str, raw: bytes, call: _Call) -> Any:
        try:
            value = decode(raw)
        except CorruptValue as exc:
            if not call.corrupt_seen:
                call.corrupt_seen = True
                self._stats.add("corrupt", call.labels)
                if not self._corrupt_logged:
                    self._corrupt_logged = True
                    log.warning("cache value %s is not one this cache wrote (%s); treated as "
                                "a miss and overwritten (further ones are only counted)",
                                key, exc)
            return _MISS
        self._stats.add("bytes_read", call.labels, len(raw))
        return value

    def _encode(self, key: str, value: Any, call: _Call) -> bytes | None:
        """The stored form of ``value``, or None (counted) when it cannot or should not be."""
        try:
            data = encode(value)
        except UnencodableValue as exc:
            self._stats.add("errors", call.labels)
            log.debug("not caching %s: %s", key, exc)
            return None
        if len(data) > self.max_value_bytes:
            self._stats.add("skipped_too_large", call.labels)
            return None
        return data

    async def _write(self, key: str, value: Any, ttl: float | None, call: _Call) -> bool:
        data = self._encode(key, value, call)
        if data is None:
            return False
        await self._backend(call, self.backend.set(key, data, ttl))
        if call.degraded:
            return False
        self._stats.add("stores", call.labels)
        self._stats.add("bytes_written", call.labels, len(data))
        return True
