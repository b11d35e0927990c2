"""The before/after viewer at ``/``: static files shipped in the package (``service/viewer``).

A page, a stylesheet and two ES modules, written by hand: no build step, no CDN, so it works
on a machine without internet. The page calls the public API (``/refine`` or ``/segment``
with ``include_coarse=true``) like any client; nothing here computes masks.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

VIEWER_DIR = Path(__file__).parent / "viewer"
PAGE_PATH = "/"
ASSETS_PATH = "/viewer"


def install_viewer(app: FastAPI) -> frozenset[str]:
    """Serve the viewer page at / and its files under /viewer; returns the paths (for metric labels)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=VIEWER_DIR), name="viewer")

    @app.get(PAGE_PATH, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(VIEWER_DIR / "index.html", media_type="text/html")

    return frozenset({PAGE_PATH})
