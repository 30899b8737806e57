"""The web playground: one page at ``/`` and ``/playground``, and its static assets.

The page is plain HTML, CSS and JavaScript shipped inside the package (``static/``): no build
step, nothing fetched from a CDN, no extra process. It talks to the gateway only through the
public API any client uses (``/v1/models``, ``/v1/pipelines``, the SSE stream), so it is a
small router module here and never reaches past the ``Gateway``. A strict Content-Security-
Policy keeps it honest about that: a script or style from anywhere but this origin is refused.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fusion.errors import ERROR_CODES, NotFound

MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")


@cache
def asset(name: str) -> tuple[bytes, str] | None:
    """An asset's bytes and ETag, read once from the package (wheel or source tree)."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(MEDIA_TYPES)):
        return None
    path = resources.files(__package__).joinpath("static", name)
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _serve(request: Request, name: str) -> Response:
    found = asset(name)
    if found is None:
        raise NotFound(f"no asset {name!r}", field="path")  # rendered with the request id
    data, etag = found
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Content-Security-Policy": CSP,
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media_type = MEDIA_TYPES["." + name.rsplit(".", 1)[1]]
    return Response(data, media_type=media_type, headers=headers)


router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/playground")
async def page(request: Request) -> Response:
    """The page (``GET /`` and ``/playground``)."""
    return _serve(request, "index.html")


@router.get("/playground/static/{name}")
async def static(name: str, request: Request) -> Response:
    return _serve(request, name)


@router.get("/playground/error-codes.json")
async def error_codes() -> dict:
    """The error table the page reads to show a stream's error with its HTTP status (one
    table: ours)."""
    return {e.code: {"status": e.status, "meaning": e.meaning} for e in ERROR_CODES}
