"""Swagger UI at /docs from files installed with the package, never from a CDN.

Machines that run bpr are often cut off from the internet; FastAPI's default /docs page
loads its script and style from jsDelivr and stays blank there. The assets come from the
``swagger-ui-bundle-v2`` wheel (Swagger UI 5, which renders the OpenAPI 3.1 document FastAPI
writes) and are served under ``/docs/assets``. ReDoc has no such wheel, so /redoc is off;
``/openapi.json`` is the machine-readable document.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


def install_docs(app: FastAPI) -> frozenset[str]:
    """Serve Swagger UI at /docs with local assets; returns the paths it added (for metric labels)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    return frozenset({DOCS_PATH})
