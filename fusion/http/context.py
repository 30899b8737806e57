"""The per-request context every route reads, as FastAPI dependencies.

The request id and the arrival instant are set by ``RequestIdMiddleware`` before any route
runs; the deadline of ``X-Request-Timeout`` counts from that arrival, so time spent reading
an upload or decoding images is charged to the client's budget like the model time is.
"""

from __future__ import annotations

import time

from fastapi import Request

from fusion.core.admission import TIMEOUT_HEADER, parse_request_timeout
from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy
from fusion.http.errors import request_id

__all__ = ["arrived", "cache_policy", "gateway", "request_deadline", "request_id"]


def arrived(request: Request) -> float:
    """The monotonic instant the request reached the edge (now, outside the middleware)."""
    return getattr(request.state, "arrived", None) or time.monotonic()


async def request_deadline(request: Request) -> float | None:
    """The monotonic instant the request must be done by (``None``: no deadline), or a 422
    naming ``X-Request-Timeout`` when the header is not a sane number of seconds."""
    timeout = parse_request_timeout(request.headers.get(TIMEOUT_HEADER))
    return None if timeout is None else arrived(request) + timeout


async def cache_policy(request: Request) -> CachePolicy:
    """``Cache-Control: no-cache | no-store`` as the executor's policy."""
    return CachePolicy.from_header(request.headers.get("cache-control"))


async def gateway(request: Request) -> Gateway:
    """The gateway the app serves (async: a sync dependency would hop to a thread pool)."""
    return request.app.state.get_gateway()
