"""POST /refine: an image and its coarse instances in, refined instances out."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.deadline import RequestDeadline
from service.inputs import read_form
from service.options import RefineQuery
from service.pipeline import RefinePipeline
from service.schemas import RefineForm, RefineResponse, error_responses, multipart_body
from service.security import require_api_key
from service.state import ServiceState, get_pipeline, get_state

router = APIRouter(tags=["refine"], dependencies=[Depends(require_api_key)])


@router.post(
    "/refine",
    response_model=RefineResponse,
    summary="Refine the masks of one image",
    openapi_extra=multipart_body(RefineForm),
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "JSON by default; with ?output=png an instance-id PNG (pixel k = k-th instance, 1-based). "
            "Headers X-BPR-Patches, X-BPR-Passes and Server-Timing (ms per stage) say what it cost",
        },
        **error_responses(400, 401, 413, 422, 429, 503),
    },
)
async def refine(
    request: Request,
    state: Annotated[ServiceState, Depends(get_state)],
    pipeline: Annotated[RefinePipeline, Depends(get_pipeline)],
    query: Annotated[RefineQuery, Query()],
    output: Annotated[
        Literal["json", "png"], Query(description="json: RLE per instance; png: one instance-id PNG")
    ] = "json",
    include_coarse: Annotated[
        bool, Query(description="json only: also return the input masks as the server read them (RLE)")
    ] = False,
) -> Response:
    """Send the image in form field `image` and the instances in `instances`: JSON in the
    shape of COCO results entries (RLE or polygons, plus any fields of yours, returned
    unchanged), or an instance-id PNG. The answer lists the refined instances in the same
    order, each with a new RLE, `bbox` and `area`; it equals what `bpr-refine` writes for
    the same image, instances and settings. `include_coarse=true` adds the input masks as
    decoded here (polygons rasterised, PNG ids split), for clients that compare before and after.
    """
    async with RequestDeadline(request, state.settings.request_timeout_s, state.metrics) as deadline:
        parts = await deadline.read(read_form(request, pipeline.limits, ("image", "instances")))
        answer = await deadline.run(
            pipeline.refine(parts["image"].data, parts["instances"].data, query, output, include_coarse)
        )
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
