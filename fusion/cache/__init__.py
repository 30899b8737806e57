"""Result cache: content-addressed keys, a safe codec, Redis or in-process storage, single-flight.

Pure asyncio: imports neither torch nor ray (``redis`` is imported only by ``RedisBackend``).

Keys (``fusion.cache.keys``)::

    step_key(namespace, fingerprint, task, inputs) -> "ns:v1:<fingerprint>:<task>:<sha256>"
    pipeline_key(namespace, spec_digest, inputs)   -> "ns:v1:pipeline:<spec_digest>:<sha256>"
    digest(value) -> sha256 hex of a canonical encoding (e.g. spec + model fingerprints)

The hash covers a canonical, type-tagged encoding (sorted mapping keys; ``1`` ≠ ``"1"`` ≠
``1.0``; ``b"x"`` ≠ ``"x"``; bytes hashed as bytes), so keys are stable across processes.

Values (``fusion.cache.codec``): msgpack with a magic/version/CRC header, never pickle.
Anything else stored under a key decodes as a miss and is counted as ``corrupt``.

Backends (``fusion.cache.backends``), one async interface ``CacheBackend``::

    get(key) -> bytes | None        set(key, value, ttl_s)        delete(key)
    get_many(keys) -> list[bytes | None]  (MGET)   set_many([(key, value)], ttl_s)  (pipelined)
    clear_namespace(namespace) -> int                   (Redis: SCAN MATCH ns:* + UNLINK)
    acquire(lock_key, owner_token, ttl_ms) -> bool      (SET NX PX)
    release(lock_key, owner_token) -> bool              (compare-and-delete, Lua)
    refresh(lock_key, owner_token, ttl_ms) -> bool      (compare-and-extend, Lua)

``MemoryBackend(max_bytes)``: LRU bounded by bytes, TTLs, process-local locks.
``RedisBackend(url, timeout_s=, retry_after_s=)``: one pool, socket timeouts, no retries, a
circuit breaker; raises only ``CacheUnavailable``. Waiters learn that a result landed by
polling ``get`` with exponential backoff (2 ms → 50 ms) and take over when ``acquire``
succeeds (the owner released or its lock expired without a value).

The cache (``StepCache``)::

    cache = StepCache.from_config(cfg: CacheConfig, on_event=None)  # Redis if cfg.redis_url
    key = cache.step_key(fingerprint, task, inputs)                # or cache.pipeline_key(...)
    value, outcome = await cache.get_or_compute(
        key, compute, ttl_s=None, read=True, write=True, labels=(model, task))
    outcome.cached, outcome.coalesced
    await cache.get(key) -> dict | None ; await cache.put(key, value, ttl_s=None) -> bool
    await cache.delete(key)
    await cache.clear(strict=False) -> int  # this namespace only; 0 (or CacheUnavailable
                                            # if strict) when the backend is down
    cache.stats() -> {"backend", "namespace", "enabled", "healthy", "in_flight",
                      "total": {counter: n}, "by_label": {"model/task": {counter: n}}}
    await cache.shared_stats() -> {"total", "by_label"} summed over all replicas, or None
                       (each replica adds its counts to the hash ``ns:v1:stats`` at most
                       once a second in the background, and on ``flush_stats()``)
    await cache.aclose()

Request policy (``Cache-Control``): none → ``read=True, write=True``; ``no-cache`` →
``read=False, write=True`` (recompute, then store); ``no-store`` → ``read=False,
write=False``. Only read+write calls join in-flight work. Single-flight: in one process,
callers of one key share one task (followers: ``coalesced=True``; a cancelled caller
cancels the work only if it was the last one); across replicas, the owner of the lock
``ns:lock:<rest of key>`` computes, stores, releases, and heartbeats the lock (TTL
``lock_ttl_ms``, extended every third of it) while computing; waiters give up after
``wait_timeout_s`` (default 4 × lock TTL) and compute themselves. Errors of ``compute``
reach all sharing callers and are not cached. Values larger than ``max_value_bytes`` are
returned but not stored. Returned values may be shared between callers: treat them as
read-only.

Degradation: if the backend is down, slow or flushed, every operation is a miss or a no-op
within a few ``redis_timeout_s``; one warning per outage and one info at recovery are logged
(logger ``fusion.cache``), ``errors`` keeps counting, and caching resumes by itself.

Counters (``fusion.cache.stats.COUNTERS``): hits, misses, coalesced (each call counts exactly
one of these three), stores, errors, corrupt, skipped_too_large, bytes_read, bytes_written.
``on_event(name, labels, value)`` mirrors each increment (labels ``{"model", "task"}``) and
the ``healthy`` gauge (0/1, empty labels), e.g. into Prometheus in the Serve layer.
"""

from fusion.cache.backends import CacheBackend, CacheUnavailable, MemoryBackend, RedisBackend
from fusion.cache.codec import CorruptValue, UnencodableValue, decode, encode
from fusion.cache.keys import KEY_VERSION, digest, lock_key, pipeline_key, step_key
from fusion.cache.stats import COUNTERS, CacheStats
from fusion.cache.step_cache import Outcome, StepCache

__all__ = [
    "COUNTERS",
    "KEY_VERSION",
    "CacheBackend",
    "CacheStats",
    "CacheUnavailable",
    "CorruptValue",
    "MemoryBackend",
    "Outcome",
    "RedisBackend",
    "StepCache",
    "UnencodableValue",
    "decode",
    "digest",
    "encode",
    "lock_key",
    "pipeline_key",
    "step_key",
]
