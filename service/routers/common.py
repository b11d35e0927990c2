"""What the two heavy routes share: the per-request deadline, the refine query parameters,
the refine step and the cost headers of its answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel

from bpr.refiner import TooManyPatches
from service.batching import QueueFull, ShuttingDown
from service.engine import OverBudget, Refined, RefineEngine
from service.errors import ServiceError
from service.metrics import ServiceMetrics

T = TypeVar("T")


async def within_deadline(
    work: Callable[[asyncio.Event], Awaitable[T]], seconds: float, request: Request, metrics: ServiceMetrics
) -> T:
    """Run ``work(body_read)`` until it answers, the deadline passes (503) or the client leaves.

    ``work`` sets ``body_read`` once it has the whole request body; from then on the client's
    connection is watched, and a client that hangs up stops the work as a timeout does: the
    request's queued patches leave the network queue and its remaining steps are skipped
    (the CPU step under way, at most one extraction or reassembly, runs to its end).
    Both count in ``bpr_cancelled_total``.
    """
    body_read = asyncio.Event()
    task = asyncio.ensure_future(work(body_read))
    watcher = asyncio.ensure_future(_client_gone(request, body_read))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task  # unwinds at its next await: the batcher drops the queued patches
    if watcher in done and not watcher.cancelled() and watcher.result():
        metrics.cancelled.inc("disconnect")
        raise ServiceError(499, "client_closed", "the client closed the connection before the answer")
    metrics.cancelled.inc("timeout")
    raise ServiceError(
        503, "timeout", f"the request took longer than {seconds:g} s (BPR_REQUEST_TIMEOUT_S)", {"Retry-After": "1"}
    )


async def _client_gone(request: Request, body_read: asyncio.Event, every_s: float = 0.2) -> bool:
    """True once the client has disconnected; only polled after the body is read (a poll reads
    one ASGI message, which must not be a body chunk)."""
    await body_read.wait()
    while not await request.is_disconnected():
        await asyncio.sleep(every_s)
    return True


async def refine_masks(engine: RefineEngine, image: np.ndarray, masks: np.ndarray, query: BaseModel) -> Refined:
    """engine.refine with this request's settings, and the queue's refusals as HTTP answers."""
    options = engine.refiner.resolve(**query.model_dump())
    try:
        return await engine.refine(image, masks, options)
    except OverBudget as exc:
        raise ServiceError(422, "over_budget", str(exc)) from None
    except TooManyPatches as exc:
        raise ServiceError(
            422, "too_many_patches", f"{exc} (BPR_MAX_QUEUED_PATCHES): send fewer or smaller instances"
        ) from None
    except QueueFull as exc:
        raise ServiceError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDown as exc:
        raise ServiceError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None


def cost_headers(refined: Refined, stages: dict[str, float]) -> dict[str, str]:
    """What the answer cost, for clients and the viewer: patches, passes and a Server-Timing
    header (milliseconds per stage, the standard browsers show in their network panel)."""
    timing = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in stages.items())
    return {"X-BPR-Patches": str(refined.patches), "X-BPR-Passes": str(refined.passes), "Server-Timing": timing}
