"""One request through the refiner: decode -> (detect) -> refine -> encode, timed per stage.

The routes validate a request and turn its :class:`Answer` into a response; everything in
between is here, once for both routes. What computes runs in the engine's CPU pool, in as few
hops as the data allow: one to decode (the image and its instances together), the engine's
own for the passes, one to encode (RLEs, the schema check and the JSON together). The event
loop only awaits, and a cancelled request stops at the next hop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from bpr.errors import BprInputError
from bpr.io.results import entries_to_masks
from bpr.refiner import TooManyPatches
from service.batching import QueueFull, ShuttingDown
from service.detectors import NO_DETECTOR_HELP, Detector
from service.engine import OverBudget, Refined, RefineEngine
from service.errors import ServiceError, input_error
from service.inputs import InputLimits, decode_image, keep_top_detections, parse_instances
from service.metrics import Histogram, ServiceMetrics
from service.outputs import instances_json, masks_to_id_png
from service.schemas import RefineResponse, SegmentResponse

Entries = list[dict[str, Any]]
OutputFormat = Literal["json", "png"]


@dataclass(frozen=True)
class Answer:
    """One request's answer, encoded, and what it cost."""

    body: bytes
    media_type: str  # application/json or image/png
    instances: int
    patches: int  # boundary patches over all passes
    passes: int
    stages: dict[str, float]  # seconds per stage, in the order they ran

    @property
    def headers(self) -> dict[str, str]:
        """What the answer cost, for clients and the viewer: patches, passes and a Server-Timing
        header (milliseconds per stage, the standard browsers show in their network panel).
        An instance-id PNG also says how many instances it holds, which its pixels cannot (an
        instance refined to nothing leaves no id)."""
        timing = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items())
        headers = {"X-BPR-Patches": str(self.patches), "X-BPR-Passes": str(self.passes), "Server-Timing": timing}
        if self.media_type == "image/png":
            headers["X-BPR-Instances"] = str(self.instances)
        return headers


class StageTimes:
    """Seconds per stage of one request, in the order they ran (the Server-Timing header).

    A stage measured here also goes to ``bpr_stage_duration_seconds``; the refine stage is
    only noted, since the engine records its finer stages (extract, batch_wait, reassemble)."""

    def __init__(self, histogram: Histogram) -> None:
        self.seconds: dict[str, float] = {}
        self._histogram = histogram

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Time the block; a block that raises records nothing."""
        start = time.perf_counter()
        yield
        self.seconds[stage] = elapsed = time.perf_counter() - start
        self._histogram.observe(elapsed, stage)

    def note(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = seconds


class RefinePipeline:
    """decode -> refine -> encode for /refine; decode -> detect -> refine -> encode for /segment.

    One per app, built once the engine runs; concurrent requests share it (it keeps no
    per-request state). Failures are :class:`ServiceError` with the status and code the
    routes answer.
    """

    def __init__(
        self,
        engine: RefineEngine,
        metrics: ServiceMetrics,
        limits: InputLimits,
        detector: Detector | None = None,
        min_score: float = 0.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.limits = limits
        self.detector = detector
        self.min_score = min_score  # /segment's default score threshold (BPR_MIN_SCORE)

    async def refine(
        self,
        image: bytes,
        instances: bytes,
        query: BaseModel,
        output: OutputFormat = "json",
        include_coarse: bool = False,
    ) -> Answer:
        """An encoded image and its instances (JSON or instance-id PNG, as uploaded) -> the
        refined instances as JSON (with the input masks as decoded, if ``include_coarse``) or
        as an instance-id PNG. ``query``: this request's refine options (None = the server's)."""
        stages = StageTimes(self.metrics.stage)
        with stages.measure("decode"):
            pixels, entries, masks = await self.engine.cpu(self._decode_with_instances, image, instances)
        refined = await self._refine(pixels, masks, query, stages)
        with stages.measure("encode"):
            if output == "png":
                body = await self.engine.cpu(masks_to_id_png, refined.masks)
            else:
                coarse = masks if include_coarse else None
                body = await self.engine.cpu(instances_json, RefineResponse, entries, refined.masks, coarse)
        media_type = "image/png" if output == "png" else "application/json"
        return Answer(body, media_type, len(refined.masks), refined.patches, refined.passes, stages.seconds)

    async def segment(
        self,
        image: bytes,
        filename: str | None,
        query: BaseModel,
        include_coarse: bool = False,
        min_score: float | None = None,
    ) -> Answer:
        """An encoded image -> the detector's instances, refined, as JSON. At most as many
        detections as the instance limits allow are kept (the best-scoring), none under
        ``min_score`` (default BPR_MIN_SCORE)."""
        detector = self.require_detector()
        stages = StageTimes(self.metrics.stage)
        with stages.measure("decode"):
            pixels = await self.engine.cpu(decode_image, image, self.limits.max_pixels)
        with stages.measure("detect"):
            detections = await detector.detect(image, pixels, filename)
        threshold = self.min_score if min_score is None else min_score
        height, width = pixels.shape[:2]
        entries, masks = await self.engine.cpu(self._detections_to_masks, detections, threshold, height, width)
        refined = await self._refine(pixels, masks, query, stages)
        with stages.measure("encode"):
            coarse = masks if include_coarse else None
            fields = {"detector": detector.kind}
            body = await self.engine.cpu(instances_json, SegmentResponse, entries, refined.masks, coarse, fields)
        return Answer(body, "application/json", len(refined.masks), refined.patches, refined.passes, stages.seconds)

    def require_detector(self) -> Detector:
        """The upstream detector; 503 ``no_detector`` (with how to configure one) without one."""
        if self.detector is None:
            raise ServiceError(503, "no_detector", NO_DETECTOR_HELP)
        return self.detector

    # ------------------------------------------------------------------ the stages
    def _decode_with_instances(self, image: bytes, instances: bytes) -> tuple[np.ndarray, Entries, np.ndarray]:
        """(HxWx3 uint8 RGB, the instance entries, their NxHxW bool masks); one CPU hop for both."""
        pixels = decode_image(image, self.limits.max_pixels)
        entries, masks = parse_instances(instances, pixels.shape[0], pixels.shape[1], self.limits)
        return pixels, entries, masks

    def _detections_to_masks(
        self, detections: Entries, min_score: float, height: int, width: int
    ) -> tuple[Entries, np.ndarray]:
        """The detections kept (score and instance limits) and their masks; a detection that
        does not decode is the upstream's fault: 502."""
        entries = keep_top_detections(detections, min_score, self.limits.instances_for(height, width))
        try:
            return entries, entries_to_masks(entries, height, width, "detector output")
        except BprInputError as exc:
            raise input_error(exc, "detector") from None

    async def _refine(self, pixels: np.ndarray, masks: np.ndarray, query: BaseModel, stages: StageTimes) -> Refined:
        """The engine's refinement with this request's options; its refusals as HTTP answers."""
        try:
            refined = await self.engine.refine(pixels, masks, **query.model_dump())
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
        stages.note("refine", refined.seconds)
        return refined
