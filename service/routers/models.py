"""GET /v1/models: which refiner (and detector) this server runs, with its settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

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
        nms_iou=o.nms_iou,
        cover_all=o.cover_all,
        resolve_overlaps=o.resolve_overlaps,
        flip_tta=o.flip_tta,
        iterations=o.iterations,
        confine_passes=o.confine_passes,
        fallback_iou=o.fallback_iou,
        min_area=o.min_area,
        change_margin=o.change_margin,
        quality_gate=r.gate_applies(o),
        parameters=sum(p.numel() for p in r.net.parameters()),
    )
    detector = state.detector.describe() if state.detector is not None else None
    return ModelsResponse(refiner=refiner, detector=detector)
