"""Drive an async ``httpx`` transport (e.g. ``httpx.ASGITransport``) from the blocking client,
so tests and embedders can serve an in-process gateway to :class:`FusionClient`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx


class SyncOverAsyncTransport(httpx.BaseTransport):
    """Drive an async transport (e.g. ``httpx.ASGITransport``) from the blocking client.

    Requests run on one private event loop in a daemon thread, so an in-process ASGI app keeps
    a single loop for its lifetime. Response bodies are read whole before they are returned
    (a stream then arrives at once, which is fine for tests).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self, coro: Any) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                name="fusion-client-transport", daemon=True)
                self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def go() -> httpx.Response:
            forwarded = httpx.Request(request.method, request.url, headers=request.headers,
                                      content=content, extensions=request.extensions)
            response = await self._transport.handle_async_request(forwarded)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=raw, extensions=response.extensions)

        return self._run(go())

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._transport.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None
