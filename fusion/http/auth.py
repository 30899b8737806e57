"""FastAPI dependencies that check the ``Authorization`` header against the gateway's key ring."""

from __future__ import annotations

from fastapi import Request

from fusion.core.keys import KeyRing


def _ring(request: Request) -> KeyRing:
    return request.app.state.get_gateway().keyring


async def require_key(request: Request) -> None:
    _ring(request).check(request.headers.get("authorization"))


async def require_admin(request: Request) -> None:
    _ring(request).check(request.headers.get("authorization"), admin=True)
