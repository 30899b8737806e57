"""FastAPI dependencies that turn the ``Authorization`` header into the request's caller.

``require_key`` resolves the key (static, issued or anonymous: ``fusion.core.tenants``) and
binds it to the request, so the gateway enforces its allow-lists and limits before any model
work; ``require_admin`` also demands the admin scope, even when user auth is off.
"""

from __future__ import annotations

from fastapi import Request

from fusion.core.tenants import Principal, Tenants, bind


async def principal(request: Request) -> Principal:
    """The caller of this request (bound for the gateway; cached on the request)."""
    found = getattr(request.state, "principal", None)
    if found is None:
        tenants = request.app.state.get_gateway().tenants
        found = await tenants.authenticate(request.headers.get("authorization"))
        request.state.principal = found
        request.state.key_id = found.key_id
    bind(found, getattr(request.state, "rate_headers", None))
    return found


async def require_key(request: Request) -> None:
    await principal(request)


async def require_admin(request: Request) -> None:
    caller = await principal(request)
    Tenants.require_admin(caller, request.app.state.get_gateway().tenants.admin_configured)
