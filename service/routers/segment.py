"""POST /segment: an image in; the upstream detector's instances, refined, out."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from bpr.errors import BprInputError
from bpr.io.results import entries_to_masks
from service.detectors import NO_DETECTOR_HELP
from service.engine import RefineEngine
from service.errors import ServiceError, input_error
from service.inputs import InputLimits, decode_image, keep_top_detections, read_form
from service.options import RefineQuery
from service.outputs import refined_entries, typed_json
from service.routers.common import cost_headers, refine_masks, within_deadline
from service.schemas import (
    SegmentForm,
    SegmentResponse,
    error_responses,
    multipart_body,
)
from service.security import require_api_key
from service.state import ServiceState, get_engine, get_state

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
    engine: Annotated[RefineEngine, Depends(get_engine)],
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
    settings, detector = state.settings, state.detector
    if detector is None:
        raise ServiceError(503, "no_detector", NO_DETECTOR_HELP)

    limits = InputLimits.of(settings)

    async def work(body_read: asyncio.Event) -> Response:
        parts = await read_form(request, limits, ("image",))
        body_read.set()
        upload = parts["image"]
        t0 = time.perf_counter()
        image = await engine.cpu(decode_image, upload.data, settings.max_pixels)
        t1 = time.perf_counter()
        state.metrics.stage.observe(t1 - t0, "decode")
        detections = await detector.detect(upload.data, image, upload.filename)
        detected = time.perf_counter()
        state.metrics.stage.observe(detected - t1, "detect")
        h, w = image.shape[:2]
        limit = limits.instances_for(h, w)
        threshold = settings.min_score if min_score is None else min_score
        entries = keep_top_detections(detections, threshold, limit)
        try:
            masks = await engine.cpu(entries_to_masks, entries, h, w, "detector output")
        except BprInputError as exc:
            raise input_error(exc, "detector") from None
        refined = await refine_masks(engine, image, masks, query)
        t2 = time.perf_counter()
        body = {
            "instances": await engine.cpu(refined_entries, entries, refined.masks),
            "coarse": await engine.cpu(refined_entries, entries, masks) if include_coarse else None,
            "detector": detector.kind,
        }
        stages = {"decode": t1 - t0, "detect": detected - t1, "refine": refined.seconds, "encode": time.perf_counter() - t2}
        json = await engine.cpu(typed_json, SegmentResponse, body)
        response = Response(json, media_type="application/json", headers=cost_headers(refined, stages))
        state.metrics.stage.observe(time.perf_counter() - t2, "encode")
        return response

    return await within_deadline(work, settings.request_timeout_s, request, state.metrics)
