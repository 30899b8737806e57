"""Cache routes: statistics for everyone with a key, clearing for admins only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI

from fusion.errors import NotFound
from fusion.gateway import Gateway


def add_admin_routes(app: FastAPI, gateway: Callable[[], Awaitable[Gateway]], require_key,
                     require_admin) -> None:
    @app.get("/v1/cache/stats", tags=["cache"], dependencies=[Depends(require_key)])
    async def cache_stats(gw: Gateway = Depends(gateway)) -> dict:
        if gw.cache is None:
            return {"backend": "disabled"}
        stats = gw.cache.stats()
        # the documented shape (docs/api.md, read by the SDK): counters at the top level and
        # per model/task under "per_task"; "total"/"by_label" kept for existing readers
        return {**stats, **stats.get("total", {}), "per_task": stats.get("by_label", {})}

    @app.delete("/v1/cache", tags=["cache"], dependencies=[Depends(require_admin)])
    async def clear_cache(gw: Gateway = Depends(gateway)) -> dict:
        if gw.cache is None:
            raise NotFound("the cache is disabled in this gateway's config", field="cache")
        return {"deleted": await gw.cache.clear()}
