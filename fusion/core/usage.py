"""Usage counted on the request path, written to the database off it, in batches.

Without Redis, counting is a dict update (no I/O while a request waits). A background task
swaps the counts out every ``auth.usage_flush_s`` and writes them as one batch with a fresh
id; a batch that fails to write stays pending, with the same id, and is retried first (ids
make a retry after an unseen commit add nothing twice: ``fusion.store.usage``). ``flush()`` on
shutdown writes what is left, so a router restart loses nothing it counted.

With Redis (``auth.rate_limit_redis_url``), a request is counted in Redis before its answer
leaves (one pipelined ``HINCRBY`` round trip, :class:`RedisUsage`), into one hash every
replica shares. A flush renames that hash to a batch of its own (atomic: later counts start a
new hash), writes it under the batch's id and deletes it; any replica also adopts batches
left behind. So a router replica that is killed (SIGKILL, node lost) loses nothing it
answered: its counts are already in Redis, and another replica writes them. What Redis holds
for at most one flush period is what a Redis that loses its data would lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fusion.store.usage import COUNTS, UsageKey, UsageStore

log = logging.getLogger("fusion.core.usage")


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


class UsageRecorder:
    """Counts of this router replica, flushed to ``store()`` (opened lazily, in a thread)."""

    def __init__(self, store: Callable[[], UsageStore], flush_s: float = 2.0,
                 redis: RedisUsage | None = None) -> None:
        self._store = store
        self.redis = redis
        self.flush_s = flush_s
        self.counts: dict[UsageKey, dict[str, float]] = {}
        self.pending: list[tuple[str, dict[UsageKey, dict[str, float]]]] = []
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.failures = 0
        self.written_batches = 0

    async def commit(self, key_id: str, kind: str, name: str,
                     also: Callable[[Any], bool] | None = None, **counts: float) -> None:
        """Count one answered (or refused) request before its answer leaves: in Redis when
        configured (survives this process), else in memory (:meth:`add`). ``also(pipe)``
        queues more commands for the same round trip (the limits' end of the request)."""
        if self.redis is not None:
            try:
                pipe = self.redis.client.pipeline(transaction=False)
                self.redis.queue_count(pipe, UsageKey(key_id, kind, name, today()), counts)
                if also is not None:
                    also(pipe)
                await pipe.execute()
                self._start()
                return
            except Exception as exc:  # Redis down: count here, written by this replica
                log.warning("usage not counted in Redis (%s: %s); kept in this replica",
                            type(exc).__name__, exc)
        self.add(key_id, kind, name, **counts)

    def add(self, key_id: str, kind: str, name: str, **counts: float) -> None:
        """Count in this replica's memory: no I/O. Starts the flusher on first use."""
        row = self.counts.setdefault(UsageKey(key_id, kind, name, today()),
                                     dict.fromkeys(COUNTS, 0))
        for name_, value in counts.items():
            row[name_] += value
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            # no loop (a sync caller): the next flush() writes it
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            with contextlib.suppress(Exception):  # logged in flush; the batch stays pending
                await self.flush()

    async def flush(self) -> int:
        """Write every pending batch and the current counts; rows written."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.counts:
                batch, self.counts = self.counts, {}
                self.pending.append((uuid.uuid4().hex, batch))
            written = await self._flush_redis()
            while self.pending:
                batch_id, rows = self.pending[0]
                try:
                    store = await asyncio.to_thread(self._store)
                    await asyncio.to_thread(store.write_batch, batch_id, rows)
                except Exception as exc:
                    self.failures += 1
                    log.warning("usage batch %s not written (%s: %s); kept, retried in %.3gs",
                                batch_id, type(exc).__name__, exc, self.flush_s)
                    raise
                self.pending.pop(0)
                self.written_batches += 1
                written += len(rows)
            return written

    async def _flush_redis(self) -> int:
        """Seal the shared live counts and write every sealed batch (any replica's)."""
        if self.redis is None:
            return 0
        try:
            await self.redis.seal()
            batches = await self.redis.batches()
        except Exception as exc:  # the counts stay in Redis for the next flush
            log.warning("usage batches not read from Redis (%s: %s)", type(exc).__name__, exc)
            return 0
        written = 0
        for batch in batches:
            rows = await self.redis.read(batch)
            if rows:
                try:
                    store = await asyncio.to_thread(self._store)
                    await asyncio.to_thread(store.write_batch, batch.rsplit(":", 1)[-1], rows)
                except Exception as exc:
                    self.failures += 1
                    log.warning("usage batch %s not written (%s: %s); it stays in Redis",
                                batch, type(exc).__name__, exc)
                    raise
            await self.redis.delete(batch)  # after the write: a crash before it re-writes
            self.written_batches += 1
            written += len(rows)
        return written

    async def aclose(self) -> None:
        """Flush what is left (shutdown), then stop the flusher."""
        if self._task is not None:
            self._task.cancel()
        try:
            await self.flush()
        except Exception:  # already logged: nothing more can be done at shutdown
            log.error("usage not written at shutdown: %d batch(es) lost", len(self.pending))
        if self.redis is not None:
            await self.redis.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {"pending_batches": len(self.pending), "unflushed_rows": len(self.counts),
                "failures": self.failures}


_SEP = "\x1f"  # between the parts of a hash field: key id, kind, name, day, count
# KEYS: live hash, set of batches, the new batch
_SEAL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[3])
redis.call('SADD', KEYS[2], KEYS[3])
return 1
"""


class RedisUsage:
    """The counts shared in Redis: ``count`` on the request path, ``drain`` in the flusher."""

    def __init__(self, url: str, namespace: str = "fusion:usage", timeout_s: float = 0.5,
                 client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.client = client if client is not None else aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            client_name="fusion-usage")
        self.ns = namespace

    async def count(self, key: UsageKey, counts: dict[str, float]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.queue_count(pipe, key, counts)
        await pipe.execute()

    def queue_count(self, pipe: Any, key: UsageKey, counts: dict[str, float]) -> None:
        """Queue the counts of one request on ``pipe`` (sent by the caller)."""
        live = f"{self.ns}:live"
        for name, value in counts.items():
            if not value:
                continue
            field = _SEP.join((key.key_id, key.kind, key.name, key.day, name))
            if name == "compute_s":
                pipe.hincrbyfloat(live, field, value)
            else:
                pipe.hincrby(live, field, int(value))

    async def seal(self) -> None:
        """Move the live counts to a batch of their own, listed in the set of batches, in one
        atomic step (nothing when none were counted)."""
        await self.client.eval(_SEAL_LUA, 3, f"{self.ns}:live", f"{self.ns}:batches",
                               f"{self.ns}:batch:{uuid.uuid4().hex}")

    async def batches(self) -> list[str]:
        """Every sealed batch, this replica's and any a dead replica left behind (a set, not
        a SCAN: the same Redis may hold millions of cache entries)."""
        found = await self.client.smembers(f"{self.ns}:batches")
        return sorted(k.decode() if isinstance(k, bytes) else k for k in found)

    async def read(self, batch: str) -> dict[UsageKey, dict[str, float]]:
        rows: dict[UsageKey, dict[str, float]] = {}
        for field, value in (await self.client.hgetall(batch)).items():
            parts = (field.decode() if isinstance(field, bytes) else field).split(_SEP)
            if len(parts) != 5 or parts[4] not in COUNTS:
                continue
            row = rows.setdefault(UsageKey(*parts[:4]), dict.fromkeys(COUNTS, 0))
            row[parts[4]] += float(value)
        return rows

    async def delete(self, batch: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(batch)
        pipe.srem(f"{self.ns}:batches", batch)
        await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()
