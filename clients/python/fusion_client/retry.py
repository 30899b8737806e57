"""When and how long the clients wait before repeating a request (see :class:`RetryPolicy`);
pure arithmetic on statuses, headers and exceptions, so it is unit-tested without a network.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping

import httpx

TIMEOUT_HEADER = "X-Request-Timeout"
MIN_TIME_LEFT_S = 0.001  # less than this left after a wait: the retry could only time out


class RetryPolicy:
    """When and how long to wait before retrying.

    Retried: HTTP 503 (the gateway sheds load) and transport failures where no answer came
    (connection refused/reset, connect or pool timeouts, broken responses). Never retried: 4xx,
    other 5xx, read timeouts (the request is likely still running). Waits grow exponentially
    (``backoff`` · 2^attempt, capped at ``max_backoff``) with "equal jitter" (half fixed, half
    random); a ``Retry-After`` header (seconds or HTTP date) replaces the computed wait, capped
    at ``max_retry_after``.
    """

    retry_statuses = frozenset({503})

    def __init__(self, retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 max_retry_after: float = 60.0, rng: random.Random | None = None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.rng = rng or random.Random()

    def backoff_delay(self, attempt: int) -> float:
        cap = min(self.max_backoff, self.backoff * (2 ** attempt))
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None:
                return None
            seconds = when.timestamp() - time.time()
        return max(0.0, min(self.max_retry_after, seconds))

    def retry_after_ms(self, value: str | None) -> float | None:
        """``Retry-After-Ms`` (the gateway's exact estimate; ``Retry-After`` rounds up to
        whole seconds), in seconds."""
        try:
            ms = float(value) if value else None
        except ValueError:
            return None
        if ms is None or ms != ms:
            return None
        return max(0.0, min(self.max_retry_after, ms / 1000))

    def delay_after_status(self, attempt: int, status: int,
                           headers: Mapping[str, str]) -> float | None:
        """Seconds to wait before retrying after ``status``, or ``None``: do not retry."""
        if attempt >= self.retries or status not in self.retry_statuses:
            return None
        after = self.retry_after_ms(headers.get("retry-after-ms"))
        if after is None:
            after = self.retry_after(headers.get("retry-after"))
        return after if after is not None else self.backoff_delay(attempt)

    def delay_after_error(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait before retrying after a transport error, or ``None``."""
        if attempt >= self.retries:
            return None
        retryable = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout | httpx.NetworkError
                               | httpx.RemoteProtocolError)
        return self.backoff_delay(attempt) if retryable else None



class Deadline:
    """One request's ``X-Request-Timeout`` across its attempts.

    The caller's ``timeout_s`` is a budget for the whole call, not for each attempt: a retry
    sends what is left of it (the first attempt's time and the wait before the retry spent),
    so the gateway never works to a deadline the caller has already given up on. A retry
    whose wait would use up what is left is not made: the last answer is the caller's.
    """

    def __init__(self, headers: Mapping[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        value = next((v for k, v in headers.items() if k.lower() == TIMEOUT_HEADER.lower()),
                     None)
        self.timeout_s = float(value) if value else None
        self.clock = clock
        self.started = clock()

    def left(self) -> float | None:
        """Seconds left of the budget now (``None``: no deadline was asked for)."""
        if self.timeout_s is None:
            return None
        return self.timeout_s - (self.clock() - self.started)

    def fit(self, delay: float | None) -> float | None:
        """``delay`` if a retry after it still has time left, else ``None`` (do not retry)."""
        left = self.left()
        if delay is None or left is None:
            return delay
        return delay if left - delay >= MIN_TIME_LEFT_S else None

    def headers(self, headers: dict[str, str], attempt: int) -> dict[str, str]:
        """The headers of attempt ``attempt``: a retry's deadline is what is left."""
        left = self.left()
        if attempt == 0 or left is None:
            return headers
        out = {k: v for k, v in headers.items() if k.lower() != TIMEOUT_HEADER.lower()}
        out[TIMEOUT_HEADER] = f"{max(left, MIN_TIME_LEFT_S):.3f}".rstrip("0").rstrip(".")
        return out
