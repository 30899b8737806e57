"""``/docs`` (Swagger UI) and ``/redoc`` served with no network: assets from the gateway.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so
offline or air-gapped they are blank. The assets here come from the ``fastapi-offline``
package (MIT), which ships builds of Swagger UI (Apache-2.0) and ReDoc (MIT), mounted under
``STATIC_URL``/docs. (The bundles point at ``*.LICENSE.txt`` sidecars that its wheel leaves
out; the licences are those of the upstream projects.) Other pages with offline assets (the
playground) mount their own folder beside it with ``mount_static``, under the same prefix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
    swagger_ui_default_parameters,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static"
DOCS_ASSETS = f"{STATIC_URL}/docs"


def docs_assets_dir() -> Path:
    """The folder holding ``swagger-ui-bundle.js``, ``swagger-ui.css``,
    ``redoc.standalone.js`` and ``favicon.png``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def mount_static(app: FastAPI, name: str, directory: Path) -> str:
    """Serve ``directory`` at ``STATIC_URL/name``; returns that URL path."""
    url = f"{STATIC_URL}/{name}"
    app.mount(url, StaticFiles(directory=str(directory)), name=f"static-{name}")
    return url


router = APIRouter(include_in_schema=False)
# no validator badge: Swagger UI would fetch it from validator.swagger.io
_PARAMS = {**swagger_ui_default_parameters, "validatorUrl": None}
REDIRECT = "/docs/oauth2-redirect"


def mount_docs_assets(app: FastAPI) -> None:
    """Serve the Swagger UI and ReDoc builds at ``DOCS_ASSETS``; create the app with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not added too."""
    mount_static(app, "docs", docs_assets_dir())


def _page(request: Request, kind: str) -> tuple[str, dict[str, str]]:
    """The path prefix the app is served under (``root_path``, e.g. behind a proxy) and
    what every docs page is given: the OpenAPI document's URL below it, and a title."""
    root = request.scope.get("root_path", "")
    return root, {"openapi_url": f"{root}{request.app.openapi_url}",
                  "title": f"{request.app.title} - {kind}"}


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    root, common = _page(request, "Swagger UI")
    return get_swagger_ui_html(
        **common, oauth2_redirect_url=f"{root}{REDIRECT}",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", swagger_ui_parameters=_PARAMS)


@router.get(REDIRECT)
async def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root, common = _page(request, "ReDoc")
    return get_redoc_html(
        **common, redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)
