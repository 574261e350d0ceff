"""The pages a person opens in a browser: the demo page at `/` and the API docs at `/docs`
and `/redoc`, every script and stylesheet served by this process (nothing from a CDN).

The pages themselves need no API key: they hold no data. The demo page's API calls send the
key the person types (`service/api/static/demo.js`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DEMO_URL = "/demo"  # the demo page's own scripts and stylesheet
DOCS_ASSETS_URL = "/docs-assets"  # Swagger UI and ReDoc, from the pinned `fastapi-offline`
_STATIC = resources.files("service.api") / "static"
# fastapi-offline ships Swagger UI 5 (OpenAPI 3.1, which FastAPI writes) and ReDoc's
# standalone bundle; only its files are used, its app factory is not
_DOCS_ASSETS = resources.files("fastapi_offline") / "static"


def add_pages(app: FastAPI) -> None:
    """`/` (the demo page), `/docs`, `/redoc` and their assets. The app must be built with
    `docs_url=None, redoc_url=None`, so FastAPI's CDN-loading pages are not registered."""
    app.mount(DEMO_URL, StaticFiles(directory=str(_STATIC)), name="demo")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(_DOCS_ASSETS)), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/", include_in_schema=False)
    async def demo() -> FileResponse:
        return FileResponse(str(_STATIC / "index.html"), media_type="text/html")

    def docs_page(request: Request, render: Callable[..., HTMLResponse], title: str,
                  **assets: str) -> HTMLResponse:
        """`render` (FastAPI's page template) with the spec and `assets` under the app's
        root path, so the pages work behind a path prefix too."""
        root = request.scope.get("root_path", "")
        return render(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - {title}",
                      **{k: f"{root}{v}" for k, v in assets.items()})

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        return docs_page(request, get_swagger_ui_html, "Swagger UI",
                         oauth2_redirect_url=redirect_url,
                         swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                         swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
                         swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png")

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return docs_page(request, partial(get_redoc_html, with_google_fonts=False), "ReDoc",
                         redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
                         redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png")
