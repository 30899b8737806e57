"""Reading and writing encoded values through a backend, for one call at a time.

Shared by every path of ``StepCache`` (single-flight fills, bypassing requests, whole
pipeline results, list look-ups), so that decoding, size limits and counting happen in one
place. Backend trouble never raises here: the call is marked degraded, one error is counted,
and the caller computes instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from fusion.cache.codec import CorruptValue, UnencodableValue, decode, encode
from fusion.cache.interface import CacheBackend, CacheUnavailable
from fusion.cache.stats import CacheStats, Labels

log = logging.getLogger("fusion.cache")

MISS = object()  # what ``read`` returns for a miss (``None`` is a storable value's absence)


@dataclass(frozen=True)
class Outcome:
    """How a value was obtained: ``cached`` — read from the store (not computed for this
    call); ``coalesced`` — shared with another in-flight request (this replica or another)."""

    cached: bool = False
    coalesced: bool = False


class CallState:
    """Per-call state: after the first backend failure the call stops touching the backend."""

    __slots__ = ("labels", "degraded", "corrupt_seen")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.degraded = False
        self.corrupt_seen = False


class ValueStore:
    """Encoded values of one cache over ``backend``, counted in ``stats``."""

    def __init__(self, backend: CacheBackend, stats: CacheStats, max_value_bytes: int) -> None:
        self.backend = backend
        self.stats = stats
        self.max_value_bytes = max_value_bytes
        self._corrupt_logged = False

    async def guarded(self, call: CallState, op: Awaitable[Any], *, count: bool = True) -> Any:
        """Run a backend operation; on failure mark the call degraded and count one error."""
        try:
            return await op
        except CacheUnavailable as exc:
            if count and not call.degraded:
                self.stats.add("errors", call.labels)
            call.degraded = True
            log.debug("cache operation failed: %s", exc)
            return None

    async def read(self, key: str, call: CallState) -> Any:
        if call.degraded:
            return MISS
        raw = await self.guarded(call, self.backend.get(key))
        if raw is None:
            return MISS
        return self.decode(key, raw, call)

    def decode(self, key: str, raw: bytes, call: CallState) -> Any:
        try:
            value = decode(raw)
        except CorruptValue as exc:
            if not call.corrupt_seen:
                call.corrupt_seen = True
                self.stats.add("corrupt", call.labels)
                if not self._corrupt_logged:
                    self._corrupt_logged = True
                    log.warning("cache value %s is not one this cache wrote (%s); treated as "
                                "a miss and overwritten (further ones are only counted)",
                                key, exc)
            return MISS
        self.stats.add("bytes_read", call.labels, len(raw))
        return value

    def encode(self, key: str, value: Any, call: CallState) -> bytes | None:
        """The stored form of ``value``, or None (counted) when it cannot or should not be."""
        try:
            data = encode(value)
        except UnencodableValue as exc:
            self.stats.add("errors", call.labels)
            log.debug("not caching %s: %s", key, exc)
            return None
        if len(data) > self.max_value_bytes:
            self.stats.add("skipped_too_large", call.labels)
            return None
        return data

    async def write(self, key: str, value: Any, ttl: float | None, call: CallState) -> bool:
        data = self.encode(key, value, call)
        if data is None:
            return False
        await self.guarded(call, self.backend.set(key, data, ttl))
        if call.degraded:
            return False
        self.stats.add("stores", call.labels)
        self.stats.add("bytes_written", call.labels, len(data))
        return True
