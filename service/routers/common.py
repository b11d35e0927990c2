"""What the two heavy routes share: the per-request deadline and the refine step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.batching import QueueFull, ShuttingDown
from service.engine import RefineEngine
from service.errors import ServiceError

T = TypeVar("T")


async def within_deadline(work: Awaitable[T], seconds: float) -> T:
    """Run ``work`` with the per-request timeout; past it 503 (its queued patches are dropped)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise ServiceError(
            503, "timeout", f"the request took longer than {seconds:g} s (BPR_REQUEST_TIMEOUT_S)", {"Retry-After": "1"}
        ) from None


async def refine_masks(engine: RefineEngine, image: np.ndarray, masks: np.ndarray, nms_iou: float | None) -> np.ndarray:
    """engine.refine with the queue's refusals as HTTP answers."""
    try:
        return await engine.refine(image, masks, engine.refiner.resolve(nms_iou=nms_iou))
    except QueueFull as exc:
        raise ServiceError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDown as exc:
        raise ServiceError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None


def typed_json(model: type[BaseModel], body: dict) -> Response:
    """``body`` checked against the route's declared response model, then sent as JSON.

    Called in the CPU pool (a large answer is real work), so the declared schema is
    enforced without blocking the event loop: an answer that breaks it is a bug and fails
    loudly (500) rather than reaching a client. The body goes out as built, keys in their
    order (the caller's fields first, as bpr-refine writes them), not re-ordered by the model.
    """
    model.model_validate(body)
    return JSONResponse(body)
