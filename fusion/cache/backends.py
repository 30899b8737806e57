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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from fusion.cache.keys import check_namespace, namespace_pattern

log = logging.getLogger("fusion.cache")

HealthHook = Callable[[bool], None]


class CacheUnavailable(Exception):
    """The backend could not serve this operation (down, slow, refusing, breaker open)."""

    def __init__(self, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped  # True: not attempted because the circuit breaker is open


class CacheBackend:
    """The async interface every backend implements (see the module docstring)."""

    name = "abstract"
    shared = False  # whether other processes (replicas) see the same store

    @property
    def healthy(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` in order, in one round trip where the store allows it."""
        return [await self.get(k) for k in keys]

    async def set_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None:
        """Store every ``(key, value)``, in one round trip where the store allows it."""
        for key, value in items:
            await self.set(key, value, ttl_s)

    async def clear_namespace(self, namespace: str) -> int:
        raise NotImplementedError

    async def acquire(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        raise NotImplementedError

    async def release(self, lock_key: str, owner_token: str) -> bool:
        raise NotImplementedError

    async def refresh(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        raise NotImplementedError

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        """Add ``deltas`` to the integer fields of the hash ``key`` (created as needed)."""
        raise NotImplementedError

    async def read_counters(self, key: str) -> dict[str, int]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def on_health_change(self, hook: HealthHook | None) -> None:
        """Register ``hook(healthy)``, called when the backend goes down or comes back."""
        self._health_hook = hook


class MemoryBackend(CacheBackend):
    """In-process LRU bounded by total bytes (keys + values), with TTLs and local locks."""

    name = "memory"

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}
        self.nbytes = 0
        self.evictions = 0
        self._counters: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self.nbytes -= self._size(key, value)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.monotonic() >= expires:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        value = bytes(value)
        size = self._size(key, value)
        if key in self._data:
            self._drop(key)
        if size > self.max_bytes or (ttl_s is not None and ttl_s <= 0):
            return
        now = time.monotonic()
        # evict expired entries first, then least recently used ones
        if self.nbytes + size > self.max_bytes:
            for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
                self._drop(k)
        while self.nbytes + size > self.max_bytes and self._data:
            oldest = next(iter(self._data))
            self._drop(oldest)
            self.evictions += 1
        self._data[key] = (value, None if ttl_s is None else now + ttl_s)
        self.nbytes += size

    async def delete(self, key: str) -> None:
        if key in self._data:
            self._drop(key)

    async def clear_namespace(self, namespace: str) -> int:
        prefix = check_namespace(namespace) + ":"
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            self._drop(k)
        locks = [k for k in self._locks if k.startswith(prefix)]
        for k in locks:
            del self._locks[k]
        counters = [k for k in self._counters if k.startswith(prefix)]
        for k in counters:
            del self._counters[k]
        return len(doomed) + len(locks) + len(counters)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        fields = self._counters.setdefault(key, {})
        for field, n in deltas.items():
            fields[field] = fields.get(field, 0) + n

    async def read_counters(self, key: str) -> dict[str, int]:
        return dict(self._counters.get(key, {}))

    def _lock_owner(self, lock_key: str) -> str | None:
        held = self._locks.get(lock_key)
        if held is None:
            return None
        if time.monotonic() >= held[1]:
            del self._locks[lock_key]
            return None
        return held[0]

    async def acquire(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        if self._lock_owner(lock_key) is not None:
            return False
        self._locks[lock_key] = (owner_token, time.monotonic() + ttl_ms / 1000)
        return True

    async def release(self, lock_key: str, owner_token: str) -> bool:
        if self._lock_owner(lock_key) != owner_token:
            return False
        del self._locks[lock_key]
        return True

    async def refresh(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        if self._lock_owner(lock_key) != owner_token:
            return False
        self._locks[lock_key] = (owner_token, time.monotonic() + ttl_ms / 1000)
        return True


_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisBackend(CacheBackend):
    """Redis through ``redis.asyncio`` with one bounded connection pool and a circuit breaker.

    ``timeout_s`` bounds connects and reads (socket timeouts); every command also has a hard
    deadline of ``deadline_factor * timeout_s`` (it may have to connect, or wait for one of
    the pool's ``max_connections``, first). Size ``timeout_s`` so that reading the largest
    value (``max_value_bytes``) over your network fits in it. There are no
    client-side retries: a failure opens the breaker for ``retry_after_s``; afterwards one
    caller probes while the others still skip, and the first successful probe closes it.
    """

    name = "redis"
    shared = True

    def __init__(self, url: str, *, timeout_s: float = 0.05, retry_after_s: float = 1.0,
                 max_connections: int = 256, deadline_factor: float = 4.0,
                 scan_count: int = 1000) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.deadline_s = timeout_s * deadline_factor
        self.scan_count = scan_count
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=self.deadline_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), client_name="fusion-cache")
        self._redis = Redis(connection_pool=self._pool)
        self._release_script = self._redis.register_script(_RELEASE_LUA)
        self._refresh_script = self._redis.register_script(_REFRESH_LUA)
        self._healthy = True
        self._open_until = 0.0
        self._probing = False
        self._health_hook: HealthHook | None = None
        self.failures = 0  # commands that failed (not counting skipped ones)
        self.outages = 0

    def __repr__(self) -> str:
        return f"RedisBackend({_redact(self.url)!r}, healthy={self._healthy})"

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def client(self) -> Any:
        """The underlying ``redis.asyncio.Redis`` (shares this backend's pool)."""
        return self._redis

    def _set_health(self, healthy: bool, exc: BaseException | None = None) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("Redis cache at %s is answering again; caching resumes", _redact(self.url))
        else:
            self.outages += 1
            log.warning("Redis cache at %s is unavailable (%s: %s); requests are served "
                        "uncached until it answers again (retry every %.1fs)",
                        _redact(self.url), type(exc).__name__, exc, self.retry_after_s)
        hook = self._health_hook
        if hook is not None:
            try:
                hook(healthy)
            except Exception:  # a metrics hook must never break caching
                log.debug("cache health hook failed", exc_info=True)

    async def _run(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        probe = False
        if not self._healthy:
            if time.monotonic() < self._open_until or self._probing:
                raise CacheUnavailable("redis circuit open", skipped=True)
            self._probing = probe = True
        try:
            result = await asyncio.wait_for(make(), self.deadline_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            from redis.exceptions import ResponseError

            self.failures += 1
            if isinstance(exc, ResponseError):
                # the server answered (OOM, READONLY, ...): it is up; count, don't trip
                if probe:
                    self._set_health(True)
                raise CacheUnavailable(f"redis {what}: {exc}") from exc
            self._open_until = time.monotonic() + self.retry_after_s
            tripped = self._healthy or probe
            self._set_health(False, exc)
            if tripped:
                await self._drop_idle_connections()
            raise CacheUnavailable(f"redis {what}: {type(exc).__name__}: {exc}") from exc
        finally:
            if probe:
                self._probing = False
        if probe:
            self._set_health(True)
        return result

    async def _drop_idle_connections(self) -> None:
        """On a trip: after a restart every pooled connection is dead, and the first wide
        burst would draw them and open the breaker a second time. Closed now, each reconnects
        on its next use (one in use is closed by the client when its command fails)."""
        with contextlib.suppress(Exception):  # a dead socket may fail to close; no matter
            await self._pool.disconnect(inuse_connections=False)

    async def ping(self) -> bool:
        try:
            return bool(await self._run("ping", self._redis.ping))
        except CacheUnavailable:
            return False

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", lambda: self._redis.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        if ttl_s is not None and ttl_s <= 0:
            return
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        await self._run("set", lambda: self._redis.set(key, value, px=px))

    async def delete(self, key: str) -> None:
        await self._run("unlink", lambda: self._redis.unlink(key))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(await self._run("mget", lambda: self._redis.mget(keys)))

    async def set_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None:
        if not items or (ttl_s is not None and ttl_s <= 0):
            return
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))

        async def set_all() -> None:  # one pipelined round trip, not a transaction
            pipe = self._redis.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, px=px)
            await pipe.execute()

        await self._run("set", set_all)

    async def clear_namespace(self, namespace: str) -> int:
        """``SCAN MATCH namespace:*`` and ``UNLINK`` each batch; never ``FLUSHDB``."""
        pattern = namespace_pattern(namespace)
        cursor, deleted = 0, 0
        while True:
            cursor, keys = await self._run(
                "scan", lambda c=cursor: self._redis.scan(c, match=pattern, count=self.scan_count))
            if keys:
                deleted += int(await self._run("unlink", lambda k=keys: self._redis.unlink(*k)))
            if int(cursor) == 0:
                return deleted

    async def acquire(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        return bool(await self._run(
            "lock", lambda: self._redis.set(lock_key, owner_token, nx=True, px=int(ttl_ms))))

    async def release(self, lock_key: str, owner_token: str) -> bool:
        return bool(await self._run(
            "unlock", lambda: self._release_script(keys=[lock_key], args=[owner_token])))

    async def refresh(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        return bool(await self._run(
            "refresh", lambda: self._refresh_script(keys=[lock_key],
                                                    args=[owner_token, int(ttl_ms)])))

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        async def incr() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for field, n in deltas.items():
                pipe.hincrby(key, field, n)
            await pipe.execute()

        await self._run("hincrby", incr)

    async def read_counters(self, key: str) -> dict[str, int]:
        raw = await self._run("hgetall", lambda: self._redis.hgetall(key))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        finally:
            await self._pool.disconnect()


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user + ':' if user else ''}***@{host}"
    return url
