"""Usage counted in memory on the request path, written to the database off it, in batches.

Counting is a dict update (no I/O while a request waits). A background task swaps the
counts out every ``auth.usage_flush_s`` and writes them as one batch with a fresh id; a batch
that fails to write stays pending, with the same id, and is retried first (ids make a retry
after an unseen commit add nothing twice: ``fusion.store.usage``). ``flush()`` on shutdown
writes what is left, so a router restart loses nothing it counted.
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

    def __init__(self, store: Callable[[], UsageStore], flush_s: float = 2.0) -> None:
        self._store = store
        self.flush_s = flush_s
        self.counts: dict[UsageKey, dict[str, float]] = {}
        self.pending: list[tuple[str, dict[UsageKey, dict[str, float]]]] = []
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.failures = 0
        self.written_batches = 0

    def add(self, key_id: str, kind: str, name: str, **counts: float) -> None:
        """Count on the request path: no I/O. Starts the flusher on first use."""
        row = self.counts.setdefault(UsageKey(key_id, kind, name, today()),
                                     dict.fromkeys(COUNTS, 0))
        for name_, value in counts.items():
            row[name_] += value
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
            written = 0
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

    async def aclose(self) -> None:
        """Flush what is left (shutdown), then stop the flusher."""
        if self._task is not None:
            self._task.cancel()
        try:
            await self.flush()
        except Exception:  # already logged: nothing more can be done at shutdown
            log.error("usage not written at shutdown: %d batch(es) lost", len(self.pending))

    def snapshot(self) -> dict[str, Any]:
        return {"pending_batches": len(self.pending), "unflushed_rows": len(self.counts),
                "failures": self.failures}
