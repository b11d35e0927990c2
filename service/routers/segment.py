"""POST /segment: an image in; the upstream detector's instances, refined, out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.deadline import RequestDeadline
from service.inputs import read_form
from service.options import RefineQuery
from service.pipeline import RefinePipeline
from service.schemas import SegmentForm, SegmentResponse, error_responses, multipart_body
from service.security import require_api_key
from service.state import ServiceState, get_pipeline, get_state

router = APIRouter(tags=["segment"], dependencies=[Depends(require_api_key)])


@router.post(
    "/segment",
    response_model=SegmentResponse,
    summary="Detect with the upstream detector, then refine",
    openapi_extra=multipart_body(SegmentForm),
    responses=error_responses(400, 401, 404, 413, 422, 429, 502, 503),
)
async def segment(
    request: Request,
    state: Annotated[ServiceState, Depends(get_state)],
    pipeline: Annotated[RefinePipeline, Depends(get_pipeline)],
    query: Annotated[RefineQuery, Query()],
    include_coarse: Annotated[bool, Query(description="also return the detector's masks before refinement")] = False,
    min_score: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="drop detections below this score (default BPR_MIN_SCORE)")
    ] = None,
) -> Response:
    """Send the image in form field `image`. The configured upstream detector (`http`,
    `mmdet` or `results`) finds the instances, bpr refines them; each instance keeps the
    detector's `category_id` and `score`. Answers 503 if no detector is configured.
    At most BPR_MAX_INSTANCES detections (the best-scoring) are refined.
    """
    pipeline.require_detector()  # before the upload is parsed: without a detector nothing can run
    async with RequestDeadline(request, state.settings.request_timeout_s, state.metrics) as deadline:
        parts = await deadline.read(read_form(request, pipeline.limits, ("image",)))
        image = parts["image"]
        answer = await deadline.run(pipeline.segment(image.data, image.filename, query, include_coarse, min_score))
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
