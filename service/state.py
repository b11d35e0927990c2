"""What the routes share: settings, metrics, the engine, the detector and the pipeline (one per app)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from service.detectors.base import Detector
from service.engine import RefineEngine
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.pipeline import RefinePipeline
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    engine: RefineEngine | None = None  # set by the lifespan once the model is loaded
    detector: Detector | None = None
    pipeline: RefinePipeline | None = None  # set with the engine: what /refine and /segment run
    in_flight: int = 0  # requests admitted to /refine and /segment (event-loop only)
    uploading: int = 0  # bodies of /refine and /segment being read, before a slot (event-loop only)


def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the app's ServiceState."""
    return request.app.state.bpr


def get_engine(request: Request) -> RefineEngine:
    """FastAPI dependency: the engine; the lifespan guarantees it exists while serving."""
    engine = get_state(request).engine
    if engine is None:  # only between startup and the model being loaded, or after shutdown
        raise _not_ready()
    return engine


def get_pipeline(request: Request) -> RefinePipeline:
    """FastAPI dependency: the refine pipeline; it exists exactly when the engine does."""
    pipeline = get_state(request).pipeline
    if pipeline is None:
        raise _not_ready()
    return pipeline


def _not_ready() -> ServiceError:
    return ServiceError(503, "not_ready", "the refiner is not loaded yet; retry shortly", {"Retry-After": "1"})
