"""GET /v1/models: which refiner (and detector) this server runs, with its settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from bpr.options import option_infos
from service.engine import RefineEngine
from service.schemas import ModelsResponse, RefinerInfo, error_responses
from service.security import require_api_key
from service.state import ServiceState, get_engine, get_state

router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])


@router.get("/v1/models", response_model=ModelsResponse, summary="What is loaded", responses=error_responses(401))
async def models(
    state: Annotated[ServiceState, Depends(get_state)], engine: Annotated[RefineEngine, Depends(get_engine)]
) -> ModelsResponse:
    r = engine.refiner
    o = r.options
    options = {name: getattr(o, name) for name in option_infos()} | {"quality_gate": r.gate_applies(o)}
    refiner = RefinerInfo(
        checkpoint=r.checkpoint,
        arch=r.net.config.arch,
        patch_size=r.patch_size,
        input_size=r.input_size,
        device=str(r.device),
        precision=r.precision,
        backend=r.backend,
        max_batch_size=r.batch_size,
        max_wait_ms=state.settings.max_wait_ms,
        **options,
        parameters=sum(p.numel() for p in r.net.parameters()),
    )
    detector = state.detector.describe() if state.detector is not None else None
    return ModelsResponse(refiner=refiner, detector=detector)
