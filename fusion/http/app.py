"""The app factory: the routers of every surface and the one middleware stack, in one place.

``create_api(get_gateway)`` is served by the Serve ingress in production and driven
in-process with httpx in tests and the embedded runtime. Routes are functions on the
routers below (one module per surface); what each request carries (id, deadline, cache
policy, key) comes from the dependencies of ``fusion.http.context`` and ``fusion.http.auth``;
every error leaves through ``fusion.http.errors``.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from fusion import __version__
from fusion.core.gateway import Gateway
from fusion.errors import FusionError
from fusion.http import admin, docs, errors, learning, native, playground, retrieval, tenants
from fusion.http.middleware import (
    BodyLimitMiddleware,
    ConfiguredCORS,
    RateLimitHeaders,
    RequestIdMiddleware,
)
from fusion.http.openai import audio, chat, embeddings, images
from fusion.observe import NULL_OBSERVER, ObserveMiddleware, Observer

ROUTERS = (native.ops, native.models, native.pipelines, embeddings.router, images.router,
           audio.router, chat.router, admin.router, tenants.admin, tenants.usage, docs.router,
           playground.router, retrieval.router, learning.router)


def create_api(get_gateway: Callable[[], Gateway], proxy_sets_request_id: bool = False
               ) -> FastAPI:
    """The FastAPI app over the gateway ``get_gateway`` returns (it may raise ``Overloaded``
    while the gateway starts). ``proxy_sets_request_id``: a proxy in front (Ray Serve's)
    already gives each request its ``x-request-id`` and echoes it, so the app reuses it and
    adds no second one."""
    app = FastAPI(title="Fusion gateway", version=__version__, docs_url=None, redoc_url=None,
                  description="Multimodal models served as one service, composed into cached "
                              "cross-modal pipelines.")
    app.state.get_gateway = get_gateway
    app.state.proxy_sets_request_id = proxy_sets_request_id

    def observer() -> Observer:
        try:
            return get_gateway().observer
        except FusionError:  # still starting: nothing to record with yet
            return NULL_OBSERVER

    # the one middleware stack, innermost first (Starlette wraps each added one around the
    # last): the body limit; observation (sees 413s and the id); CORS (answers preflights,
    # adds its headers to errors too); the request id outermost, so every answer carries it
    app.add_middleware(RateLimitHeaders)  # a limited key's x-ratelimit-* on its answers
    app.add_middleware(BodyLimitMiddleware, get_gateway=get_gateway)
    app.add_middleware(ObserveMiddleware, get_observer=observer)
    app.add_middleware(ConfiguredCORS, get_gateway=get_gateway)
    app.add_middleware(RequestIdMiddleware, proxy_sets_id=proxy_sets_request_id)

    async def write_usage() -> None:
        """Shutdown (uvicorn, or Serve stopping the replica): usage counted is written."""
        try:
            gw = get_gateway()
        except FusionError:  # never started: nothing counted
            return
        await gw.tenants.aclose()

    app.router.add_event_handler("shutdown", write_usage)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    docs.mount_docs_assets(app)
    return app
