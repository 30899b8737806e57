"""Admission control and deadlines: the one place where the router refuses work.

An overloaded gateway must say so at once (503 ``overloaded`` with a ``Retry-After`` worth
waiting) rather than answer late: a request that queues past its client's timeout costs the
model time and still fails. Every refusal is built here — over the router's in-flight limit,
a model deployment's queue full (Serve's backpressure), a deadline that has already passed —
so metrics hooks (``Admission.listeners``) see each one, and ``Retry-After`` is always computed
the same way: the backlog ahead of the caller divided by the rate at which that queue has been
draining lately.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from fusion.errors import BadInput, Overloaded, StepTimeout

# hook(kind, key, detail): kind is "rejected" (a 503) or "expired" (a deadline refused work)
AdmissionHook = Callable[[str, str, dict[str, Any]], None]

TIMEOUT_HEADER = "x-request-timeout"
MAX_REQUEST_TIMEOUT_S = 3600.0
MIN_RETRY_AFTER_S = 0.05
MAX_RETRY_AFTER_S = 30.0
DEFAULT_RETRY_AFTER_S = 1.0  # before anything has finished, there is no rate to go by


class DrainRate:
    """Completions per second over the last ``window_s`` (at most ``max_events`` kept).

    A sliding window, not an average since start: after a burst or a slow-down the estimate
    follows within one window, which is what a client deciding when to retry needs.
    """

    def __init__(self, window_s: float = 10.0, max_events: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._done: deque[float] = deque(maxlen=max_events)

    def record(self) -> None:
        self._done.append(self.clock())

    def rate(self) -> float | None:
        """Completions per second, or ``None`` while fewer than two fall in the window."""
        now = self.clock()
        while self._done and now - self._done[0] > self.window_s:
            self._done.popleft()
        if len(self._done) < 2:
            return None
        span = max(now - self._done[0], 1e-3)
        return len(self._done) / span


def retry_after_s(backlog: int, rate: float | None) -> float:
    """Seconds until ``backlog`` requests ahead of a caller have drained at ``rate``."""
    if rate is None or rate <= 0:
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, max(backlog, 1) / rate))


class Admission:
    """Bounds the requests one router replica works on, in total and per pipeline.

    ``max_in_flight`` is the total; ``pipeline_limits`` maps a pipeline name to its own bound
    (a pipeline not named shares only the total). Direct model calls (``/v1/models/...`` and
    the OpenAI routes) count under the key ``model:<name>`` against the total. Past a bound
    the request is refused with ``Overloaded`` at once — nothing waits in the router.
    """

    def __init__(self, max_in_flight: int, pipeline_limits: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.limits = dict(pipeline_limits or {})
        self.clock = clock
        self.in_flight = 0
        self.by_key: dict[str, int] = {}
        self.drained = DrainRate(clock=clock)
        self._drained_by_key: dict[str, DrainRate] = {}
        self._model_drain: dict[str, DrainRate] = {}
        self.listeners: list[AdmissionHook] = []
        self.rejected = 0
        self.expired = 0

    def _drain(self, table: dict[str, DrainRate], key: str) -> DrainRate:
        if key not in table:
            table[key] = DrainRate(clock=self.clock)
        return table[key]

    def _notify(self, kind: str, key: str, detail: dict[str, Any]) -> None:
        for hook in list(self.listeners):
            with suppress(Exception):  # a metrics hook must never turn a refusal into a 500
                hook(kind, key, detail)

    def refuse(self, key: str, message: str, backlog: int, rate: float | None) -> Overloaded:
        """The 503 for ``key``, with Retry-After from ``backlog`` and ``rate``; counted."""
        self.rejected += 1
        after = retry_after_s(backlog, rate)
        self._notify("rejected", key, {"backlog": backlog, "retry_after_s": after})
        return Overloaded(message, retry_after_s=after)

    def check(self, key: str) -> None:
        """Raise the 503 that ``admit(key)`` would raise now; take nothing."""
        limit = self.limits.get(key)
        held = self.by_key.get(key, 0)
        if limit is not None and held >= limit:
            raise self.refuse(key, f"{key!r} is at its limit of {limit} requests in flight; "
                              "retry after the Retry-After header's delay", held - limit + 1,
                              self._drain(self._drained_by_key, key).rate())
        if self.in_flight >= self.max_in_flight:
            raise self.refuse(key, f"the gateway is at its limit of {self.max_in_flight} "
                              "requests in flight; retry after the Retry-After header's delay",
                              self.in_flight - self.max_in_flight + 1, self.drained.rate())

    @contextmanager
    def admit(self, key: str) -> Iterator[None]:
        """Hold one slot of the total and of ``key``'s own limit while the block runs."""
        self.check(key)
        held = self.by_key.get(key, 0)
        self.in_flight += 1
        self.by_key[key] = held + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.by_key[key] - 1
            if left:
                self.by_key[key] = left
            else:
                del self.by_key[key]
            self.drained.record()
            if key in self.limits:
                self._drain(self._drained_by_key, key).record()

    # -- model deployments: Serve bounds their queues, we turn its refusal into a 503 --
    def model_done(self, model: str) -> None:
        """A call to ``model`` finished (either way): one more point for its drain rate."""
        self._drain(self._model_drain, model).record()

    def model_full(self, model: str, queued: int | None = None) -> Overloaded:
        """The 503 for a model whose deployment queue is full (Serve's BackPressureError)."""
        return self.refuse(f"model:{model}", f"model {model!r} is at its queue limit; retry "
                           "after the Retry-After header's delay", queued or 1,
                           self._drain(self._model_drain, model).rate())

    # -- deadlines --
    def expired_before_start(self, where: str, field: str | None) -> StepTimeout:
        """The 504 for work refused because the request's deadline passed before it began."""
        self.expired += 1
        self._notify("expired", where, {})
        return StepTimeout(f"{where} could not start before the request's deadline "
                           "(X-Request-Timeout) ran out", field=field)


def parse_request_timeout(value: str | None) -> float | None:
    """Seconds from ``X-Request-Timeout`` (``None`` when absent), or a 422 naming the header."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_REQUEST_TIMEOUT_S:
        raise BadInput(f"X-Request-Timeout must be a number of seconds in (0, "
                       f"{MAX_REQUEST_TIMEOUT_S:g}], got {value!r}", field="X-Request-Timeout")
    return seconds


def deadline_from(timeout_s: float | None, clock: Callable[[], float] = time.monotonic
                  ) -> float | None:
    """The monotonic instant a request must be done by (``None``: no deadline)."""
    return None if timeout_s is None else clock() + timeout_s
