"""The one async interface every cache backend implements (``CacheBackend``) and the one
exception a backend may raise (``CacheUnavailable``); the contract itself is described in
:mod:`fusion.cache.backends`. Kept apart from the implementations so that neither the
in-process nor the Redis backend depends on the other."""

from __future__ import annotations

from collections.abc import Callable

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
