"""A real Chromium for the playground tests, and an in-process gateway served over HTTP.

Playwright drives the system's Chromium (Debian's ``chromium`` package; ``ops/test.sh`` installs
it) through ``executable_path``: Playwright's own browser download cannot run offline. A
missing browser fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    """``$FUSION_CHROMIUM``, else the first Chromium on ``PATH``."""
    given = os.environ.get("FUSION_CHROMIUM")
    found = given or next(filter(None, map(shutil.which, CANDIDATES)), None)
    if not found:
        raise RuntimeError("no Chromium found: install Debian's `chromium` package (./ops/test.sh "
                           "does) or set FUSION_CHROMIUM to a Chromium binary")
    return found


@contextmanager
def serve_app(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app on a free port in a background thread (uvicorn); yields its URL
    once the socket listens."""
    import uvicorn

    from tests.redis_server import free_port

    ready = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            try:
                await super().startup(sockets)
            finally:
                ready.set()  # listening, or failed (then ``started`` stays false)

    port = free_port()
    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                   lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not ready.wait(30) or not server.started:
        raise RuntimeError("the in-process gateway did not start")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
