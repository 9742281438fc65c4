"""The API docs pages (``/docs``: Swagger UI, ``/redoc``: ReDoc) served from local files, so they work offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, which a machine without internet access cannot
reach (the page stays blank). The files ship in the ``fastapi-offline`` package (part of the ``serve`` extra) and
are mounted under :data:`ASSETS`; only when that package is missing do the pages fall back to the CDN, with a
logged notice.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

__all__ = ["ASSETS", "add_docs"]

#: URL prefix of the mounted Swagger UI / ReDoc files
ASSETS = "/docs-assets"
_CDN = {"js": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js",
        "css": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css",
        "redoc": "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js",
        "favicon": "https://fastapi.tiangolo.com/img/favicon.png"}

log = logging.getLogger("mmseqrec.serve")


def _asset_dir() -> Any:
    """The folder of Swagger UI / ReDoc files inside ``fastapi_offline``, or ``None`` when it is not installed."""
    try:
        root = resources.files("fastapi_offline").joinpath("static")
    except ModuleNotFoundError:
        return None
    return root if root.joinpath("swagger-ui-bundle.js").is_file() else None


def add_docs(app: Any, title: str) -> dict[str, str]:
    """Add ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` to ``app`` (created with ``docs_url=None,
    redoc_url=None``); returns the asset URLs the pages use."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    folder = _asset_dir()
    if folder is None:
        log.warning("fastapi-offline is not installed: /docs and /redoc load Swagger UI / ReDoc from a CDN and stay "
                    "blank without internet access (pip install 'mmseqrec[serve]')")
        urls = dict(_CDN)
    else:
        app.mount(ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")
        urls = {"js": f"{ASSETS}/swagger-ui-bundle.js", "css": f"{ASSETS}/swagger-ui.css",
                "redoc": f"{ASSETS}/redoc.standalone.js", "favicon": f"{ASSETS}/favicon.png"}
    redirect = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} - API docs",
                                   oauth2_redirect_url=redirect, swagger_js_url=urls["js"],
                                   swagger_css_url=urls["css"], swagger_favicon_url=urls["favicon"])

    @app.get(redirect, include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{title} - API docs", redoc_js_url=urls["redoc"],
                              redoc_favicon_url=urls["favicon"], with_google_fonts=False)

    return urls
