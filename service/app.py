"""The FastAPI app: ``create_app(settings)`` wires settings, model, detector and routers.

Lifespan: the refiner is loaded (unless handed in, as bpr-serve and the tests do), the
detector built and the network thread started before the first request; on shutdown,
after uvicorn has let in-flight requests finish, the queued patches are run, then the
threads stop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

import bpr
from bpr.refiner import Refiner
from service.detectors import Detector, build_detector
from service.docs_ui import install_docs
from service.engine import RefineEngine
from service.errors import install_error_handlers
from service.inputs import InputLimits
from service.metrics import ServiceMetrics
from service.middleware import GuardMiddleware, MetricsMiddleware
from service.pipeline import RefinePipeline
from service.routers import health, metrics, models, refine, segment
from service.settings import Settings
from service.state import ServiceState
from service.viewer_ui import install_viewer

log = logging.getLogger("bpr.service")

DESCRIPTION = """
Boundary Patch Refinement as a service: send an image and the coarse instance masks of any
detector, get sharper masks back (`POST /refine`); or let a configured upstream detector find
the instances first (`POST /segment`). Patches of concurrent requests share network batches.

Errors are JSON `{"detail": "...", "code": "..."}`. Limits and settings: `BPR_*` environment
variables, listed in docs/service.md.
"""


def build_refiner(settings: Settings) -> Refiner:
    """The Refiner the settings describe; raises ModelNotAvailableError with a clear message."""
    return settings.refiner_spec().build()


def create_app(
    settings: Settings | None = None, refiner: Refiner | None = None, detector: Detector | None = None
) -> FastAPI:
    """The app. ``refiner``/``detector``: already built ones (else built from ``settings`` at startup).

    A given ``refiner`` is used as is, so its batch size, NMS threshold etc. win over settings.
    """
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=ServiceMetrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:  # process-wide; fewer threads than cores helps when the CPU pool is busy too
            torch.set_num_threads(settings.torch_threads)
        model = refiner or build_refiner(settings)
        engine = RefineEngine(
            model,
            state.metrics,
            settings.cpu_workers,
            settings.max_wait_ms,
            settings.max_queued_patches,
            settings.request_patch_budget(str(model.device)),
        )
        net = model.net.config
        state.metrics.model_info.set(1, str(model.checkpoint), net.arch, str(model.device))
        state.detector = detector if detector is not None else build_detector(settings)
        engine.start()
        state.engine = engine
        state.pipeline = RefinePipeline(
            engine, state.metrics, InputLimits.of(settings), state.detector, settings.min_score
        )
        log.info("bpr service ready: %s on %s, detector %s", model.checkpoint, model.device, settings.detector)
        try:
            yield
        finally:
            await engine.close(settings.shutdown_timeout_s)
            if state.detector is not None:
                await state.detector.close()

    app = FastAPI(
        title="bpr", version=bpr.__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.bpr = state
    install_error_handlers(app, settings.max_upload_bytes)

    routers = [module.router for module in (refine, segment, health, models, metrics)]
    for router in routers:
        app.include_router(router)
    page_paths = install_docs(app) | install_viewer(app)
    route_paths = frozenset(
        {getattr(r, "path", "") for router in routers for r in router.routes} | {app.openapi_url or ""} | page_paths
    )
    app.add_middleware(GuardMiddleware, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=lambda: route_paths)  # outermost
    return app
