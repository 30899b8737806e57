"""What the blocking and the asyncio clients share: defaults from the environment, the retry
policy, the sans-IO protocol object and the headers (see :mod:`fusion_client.client` for the
retry rules). Kept apart so that each client module holds only its own I/O."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import httpx

from fusion_client._core import DEFAULT_URL, Protocol, RetryPolicy

TimeoutTypes = float | httpx.Timeout | None


def resolve_base_url(base_url: str | None) -> str:
    """``base_url``, else ``$FUSION_URL``, else ``http://127.0.0.1:8000`` (no trailing ``/``)."""
    url = base_url or os.environ.get("FUSION_URL") or DEFAULT_URL
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    """``api_key``, else ``$FUSION_API_KEY``, else none."""
    if api_key is not None:
        return api_key or None
    return os.environ.get("FUSION_API_KEY") or None


class _BaseClient:
    """Configuration and header building common to both clients (no I/O here)."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: TimeoutTypes,
                 retries: int, decode_images: bool, backoff: float, max_backoff: float) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries, backoff=backoff,
                                        max_backoff=max_backoff)
        self._proto = Protocol(self.api_key, decode_images=decode_images)
        self._clock: Callable[[], float] = time.monotonic  # what a retry's time left counts on

    @property
    def retries(self) -> int:
        return self.retry_policy.retries

    def _timeout_seconds(self) -> float | None:
        if isinstance(self.timeout, httpx.Timeout):
            return self.timeout.read
        return self.timeout

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = self._proto.default_headers()
        headers.update(extra or {})
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


def check_texts(texts: list[str]) -> list[str]:
    """``texts`` as a list; a bare string is refused (it would embed each character)."""
    if isinstance(texts, str):  # a lone string would embed each character
        raise TypeError("texts must be a list of strings; wrap a single text in a list")
    return list(texts)

