"""Cache routes: statistics for everyone with a key, clearing for admins only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI

from fusion.core.gateway import Gateway
from fusion.errors import NotFound


def add_admin_routes(app: FastAPI, gateway: Callable[[], Awaitable[Gateway]], require_key,
                     require_admin) -> None:
    @app.get("/v1/cache/stats", tags=["cache"], dependencies=[Depends(require_key)])
    async def cache_stats(gw: Gateway = Depends(gateway)) -> dict:
        """Counters over every router replica when the cache is shared (Redis), else this one's.

        The answer: backend facts, the counters at the top level, ``per_task`` by
        ``model/task``, ``scope`` (``cluster`` or ``replica``) and this replica's own counters
        under ``replica``.
        """
        if gw.cache is None:
            return {"backend": "disabled", "enabled": False}
        local = gw.cache.stats()
        shared = await gw.cache.shared_stats()
        view = shared or local
        facts = {k: local[k] for k in ("backend", "namespace", "enabled", "healthy",
                                        "in_flight")}
        return {**facts, "scope": "cluster" if shared else "replica", **view["total"],
                "per_task": view["by_label"],
                "replica": {**local["total"], "per_task": local["by_label"]}}

    @app.delete("/v1/cache", tags=["cache"], dependencies=[Depends(require_admin)])
    async def clear_cache(gw: Gateway = Depends(gateway)) -> dict:
        if gw.cache is None:
            raise NotFound("the cache is disabled in this gateway's config", field="cache")
        return {"deleted": await gw.cache.clear()}
