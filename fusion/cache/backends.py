"""Cache backends: one async interface, an in-process LRU and Redis.

``CacheBackend`` is the whole contract the ``StepCache`` relies on:

* ``get(key) -> bytes | None``, ``set(key, value, ttl_s)``, ``delete(key)``;
* ``get_many(keys)`` / ``set_many(items, ttl_s)``: the same for a list in one round trip
  (Redis ``MGET`` and a pipelined ``SET``), so a list request costs one look-up, not n;
* ``clear_namespace(namespace) -> int``: delete every ``namespace:*`` key, nothing else;
* single-flight locks: ``acquire(lock_key, owner_token, ttl_ms) -> bool`` (``SET NX PX``),
  ``release(lock_key, owner_token) -> bool`` (compare-and-delete: only the owner's token
  removes it) and ``refresh(lock_key, owner_token, ttl_ms) -> bool`` (compare-and-extend,
  the owner's heartbeat while it computes).

Waiters learn that a result landed by **polling** ``get`` with a short exponential backoff
(done by ``StepCache``), and take over when ``acquire`` succeeds, i.e. when the owner's lock
was released or expired without a value. Polling needs no extra connection per replica and
survives Redis restarts; only one task per replica and key polls (in-process single-flight).

``MemoryBackend`` never raises. ``RedisBackend`` raises only ``CacheUnavailable``, quickly:
each command is bounded by socket timeouts and a hard deadline, and after a failure a
circuit breaker skips Redis for ``retry_after_s`` before one probe tries again; when it trips,
the pool's idle connections are closed, so a restarted Redis costs one outage, not a second one
when a burst draws the dead connections. It logs one warning when an outage starts and one
info line when Redis answers again.

The interface lives in ``fusion.cache.interface``, the implementations in
``fusion.cache.memory_backend`` and ``fusion.cache.redis_backend``; this module gathers them.
"""

from __future__ import annotations

from fusion.cache.interface import CacheBackend, CacheUnavailable, HealthHook
from fusion.cache.memory_backend import MemoryBackend
from fusion.cache.redis_backend import RedisBackend

__all__ = ["CacheBackend", "CacheUnavailable", "HealthHook", "MemoryBackend", "RedisBackend"]
