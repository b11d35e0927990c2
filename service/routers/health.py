"""GET /healthz (the process answers) and GET /readyz (model loaded, detector reachable)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.schemas import Health, Readiness
from service.state import ServiceState, get_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the model is loaded and the detector (if any) reachable",
    responses={503: {"model": Readiness, "description": "not ready; the body says what is missing"}},
)
async def readyz(state: Annotated[ServiceState, Depends(get_state)]) -> JSONResponse:
    engine = state.engine
    model_ok = engine is not None and engine.ready
    model = "loaded" if model_ok else "not loaded (starting or shutting down)"
    detector_ok, detector = True, "not configured"
    if state.detector is not None:
        detector_ok, detector = await state.detector.ready()
    body = Readiness(ready=model_ok and detector_ok, model=model, detector=detector)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
