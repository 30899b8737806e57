"""The edge's middlewares, outermost first: request id, CORS, observation, body limit.

Plain ASGI rather than ``@app.middleware``: that wrapper costs a task and a stream copy per
request, which shows in the router-overhead benchmark. ``fusion.http.app`` stacks them in
one place.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from fusion.config import AppConfig, LimitsConfig
from fusion.core.gateway import Gateway
from fusion.errors import FusionError, PayloadTooLarge
from fusion.http import errors

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# what a browser app may send and read across origins
CORS_HEADERS = ("authorization", "content-type", "cache-control", "x-request-id",
                "x-request-timeout", "accept")
CORS_EXPOSED = ("x-request-id", "x-fusion-cache", "retry-after", "retry-after-ms")


class RequestIdMiddleware:
    """Give every request one id and every response exactly one ``x-request-id``.

    Behind Ray Serve (``proxy_sets_id``) the proxy has already put its id (the client's, or
    one it made) in the request's ``x-request-id`` and will add it to the response itself:
    the app reuses that id and adds no second header (clients would read ``a, a``). Served
    directly (tests, the embedded runtime), it takes the client's id if sane, else makes
    one, and sends it back. Either way it notes the arrival instant for deadlines.
    """

    def __init__(self, app: ASGIApp, proxy_sets_id: bool = False) -> None:
        self.app = app
        self.proxy_sets_id = proxy_sets_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-request-id"), "")
        state = scope.setdefault("state", {})
        if self.proxy_sets_id and given:
            state["request_id"], state["arrived"] = given, time.monotonic()
            return await self.app(scope, receive, send)
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state["request_id"], state["arrived"] = rid, time.monotonic()
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class ConfiguredCORS:
    """Starlette's ``CORSMiddleware`` with the origins of ``router.cors_allow_origins``.

    The app exists before its config (Serve imports it, then the replica builds the
    gateway), so the origins are read per request and a middleware is kept per origin
    list. No origins configured (the default): requests pass untouched, a preflight is
    the app's 405, and browsers keep other origins out.
    """

    def __init__(self, app: ASGIApp, get_gateway: Callable[[], Gateway]) -> None:
        self.app = app
        self.get_gateway = get_gateway
        self._cors: dict[tuple[str, ...], CORSMiddleware] = {}

    def _origins(self) -> tuple[str, ...]:
        try:
            config: AppConfig = self.get_gateway().config
        except FusionError:  # still starting: no CORS yet
            return ()
        return tuple(config.router.cors_allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = self._origins() if scope["type"] == "http" else ()
        if not origins:
            return await self.app(scope, receive, send)
        cors = self._cors.get(origins)
        if cors is None:
            cors = self._cors[origins] = CORSMiddleware(
                self.app, allow_origins=origins, allow_methods=("GET", "POST", "DELETE"),
                allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED)
        await cors(scope, receive, send)


class BodyLimitMiddleware:
    """Stop reading any request body at ``limits.max_body_bytes`` and answer 413.

    Every route, including the OpenAI ones whose bodies FastAPI parses before our code runs:
    counted here, below the framework, a 60 MB body costs at most the limit in memory. A
    declared ``Content-Length`` over the limit is refused before reading a byte; a chunked
    body at the first chunk past it. Whatever the app made of the interrupted read (FastAPI
    turns it into a 400) is dropped for the 413.
    """

    def __init__(self, app: ASGIApp, get_gateway: Callable[[], Gateway]) -> None:
        self.app = app
        self.get_gateway = get_gateway

    def _limit(self) -> int:
        try:
            return self.get_gateway().config.limits.max_body_bytes
        except FusionError:  # still starting: the default limit
            return LimitsConfig().max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self._limit()
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, f"body is {int(length)} bytes, "
                                      f"over the {limit} byte limit")
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise PayloadTooLarge(f"body is over the {limit} byte limit", field="body")
            return message

        async def guarded(message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to the interrupted read; ours follows
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"body is over the {limit} byte limit")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        rid = scope.get("state", {}).get("request_id", "-")
        response = errors.render(PayloadTooLarge(message, field="body"), rid,
                                 scope.get("path", ""))
        response.headers["Connection"] = "close"  # the rest of the body stays unread
        await response(scope, receive, send)


class RateLimitHeaders:
    """Adds the ``x-ratelimit-*`` headers of a limited key to its answer (OpenAI's clients read
    them on every response). The gateway fills ``state["rate_headers"]`` when it checks the
    key's limits (``fusion.core.tenants``), before the answer starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        found: dict[str, str] = {}
        scope.setdefault("state", {})["rate_headers"] = found

        async def send_with_limits(message) -> None:
            if message["type"] == "http.response.start" and found:
                names = {k.lower().encode() for k in found}
                headers = [h for h in message.get("headers", []) if h[0] not in names]
                message = {**message, "headers": [
                    *headers, *((k.encode(), v.encode()) for k, v in found.items())]}
            await send(message)

        await self.app(scope, receive, send_with_limits)
