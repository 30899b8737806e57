"""In-process single-flight: concurrent calls for one key share one running task.

The work runs in its own task, so a caller that is cancelled (a client gone, a step
timeout) does not cancel it for the others; when the *last* caller is cancelled, the work
is cancelled too. Every caller gets the same result or the same exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight:
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    async def do(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is False for the caller that started the work."""
        flight = self._flights.get(key)
        leader = flight is None or flight.task.done()
        if leader:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda t, k=key, f=flight: self._finished(k, f))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters <= 0 and not flight.task.done():
                flight.task.cancel()
            raise
        except BaseException:
            flight.waiters -= 1
            raise
        flight.waiters -= 1
        return result, not leader

    def _finished(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # mark retrieved: callers re-raise it, asyncio needn't log it
