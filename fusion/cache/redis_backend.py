"""``RedisBackend``: the shared cache backend, ``redis.asyncio`` behind one bounded pool and a
circuit breaker, raising only ``CacheUnavailable`` (see :mod:`fusion.cache.backends` for why
each command is bounded and how an outage is logged). ``redis`` is imported only when one is
built, so the router imports without it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fusion.cache.interface import CacheBackend, CacheUnavailable, HealthHook
from fusion.cache.keys import namespace_pattern

log = logging.getLogger("fusion.cache")


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
