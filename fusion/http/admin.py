"""Cache routes: statistics for everyone with a key, clearing for admins only."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from fusion.core.gateway import Gateway
from fusion.errors import NotFound
from fusion.http.auth import require_admin, require_key
from fusion.http.context import gateway
from fusion.http.errors import COMMON, responses

router = APIRouter(tags=["cache"])


@router.get("/v1/cache/stats", dependencies=[Depends(require_key)], responses=responses(COMMON))
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


@router.delete("/v1/cache", dependencies=[Depends(require_admin)],
               responses=responses((*COMMON, 404)))
async def clear_cache(gw: Gateway = Depends(gateway)) -> dict:
    """Drop every cached step of this gateway's namespace (admin keys only)."""
    if gw.cache is None:
        raise NotFound("the cache is disabled in this gateway's config", field="cache")
    return {"deleted": await gw.cache.clear()}
