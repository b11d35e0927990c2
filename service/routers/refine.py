"""POST /refine: an image and its coarse instances in, refined instances out."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.engine import RefineEngine
from service.inputs import InputLimits, decode_image, parse_instances, read_form
from service.options import RefineQuery
from service.outputs import masks_to_id_png, refined_entries, typed_json
from service.routers.common import cost_headers, refine_masks, within_deadline
from service.schemas import RefineForm, RefineResponse, error_responses, multipart_body
from service.security import require_api_key
from service.state import ServiceState, get_engine, get_state

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
    engine: Annotated[RefineEngine, Depends(get_engine)],
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
    settings = state.settings

    limits = InputLimits.of(settings)

    async def work(body_read: asyncio.Event) -> Response:
        parts = await read_form(request, limits, ("image", "instances"))
        body_read.set()
        t0 = time.perf_counter()
        image = await engine.cpu(decode_image, parts["image"].data, settings.max_pixels)
        entries, masks = await engine.cpu(
            parse_instances, parts["instances"].data, image.shape[0], image.shape[1], limits
        )
        decoded = time.perf_counter()
        state.metrics.stage.observe(decoded - t0, "decode")
        refined = await refine_masks(engine, image, masks, query)
        t1 = time.perf_counter()

        def headers() -> dict[str, str]:
            stages = {"decode": decoded - t0, "refine": refined.seconds, "encode": time.perf_counter() - t1}
            return cost_headers(refined, stages)

        if output == "png":
            png = await engine.cpu(masks_to_id_png, refined.masks)
            png_headers = {**headers(), "X-BPR-Instances": str(len(refined.masks))}
            response: Response = Response(png, media_type="image/png", headers=png_headers)
        else:
            body = {
                "instances": await engine.cpu(refined_entries, entries, refined.masks),
                "coarse": await engine.cpu(refined_entries, entries, masks) if include_coarse else None,
            }
            json = await engine.cpu(typed_json, RefineResponse, body)
            response = Response(json, media_type="application/json", headers=headers())
        state.metrics.stage.observe(time.perf_counter() - t1, "encode")
        return response

    return await within_deadline(work, settings.request_timeout_s, request, state.metrics)
