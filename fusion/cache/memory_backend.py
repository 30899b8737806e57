"""``MemoryBackend``: the in-process cache backend (an LRU bounded by bytes, with TTLs and
process-local locks); it never raises. Used when no Redis is configured and in unit tests."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from fusion.cache.interface import CacheBackend
from fusion.cache.keys import check_namespace


class MemoryBackend(CacheBackend):
    """In-process LRU bounded by total bytes (keys + values), with TTLs and local locks.

    ``clock`` (seconds, monotonic) decides expiries: tests pass a clock they move, so a TTL or
    a lock's expiry is checked at its exact edge instead of slept through.
    """

    name = "memory"

    def __init__(self, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._clock = clock
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
        if expires is not None and self._clock() >= expires:
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
        now = self._clock()
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
        if self._clock() >= held[1]:
            del self._locks[lock_key]
            return None
        return held[0]

    async def acquire(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        if self._lock_owner(lock_key) is not None:
            return False
        self._locks[lock_key] = (owner_token, self._clock() + ttl_ms / 1000)
        return True

    async def release(self, lock_key: str, owner_token: str) -> bool:
        if self._lock_owner(lock_key) != owner_token:
            return False
        del self._locks[lock_key]
        return True

    async def refresh(self, lock_key: str, owner_token: str, ttl_ms: int) -> bool:
        if self._lock_owner(lock_key) != owner_token:
            return False
        self._locks[lock_key] = (owner_token, self._clock() + ttl_ms / 1000)
        return True
