"""The library's Refiner behind an async door.

A request is one :class:`bpr.refiner.Refinement` (the library's pass loop): each of its CPU
steps (checking input, extraction, reassembly, the pass rules) runs in the CPU pool, and
every pass's patches go into the shared network batches (:class:`service.batching.Batcher`,
one thread). The event loop only awaits; it never runs numpy, OpenCV or torch itself.

Nothing is copied per thread: per-request options (the NMS threshold) travel with the
request's Refinement, and the Refiner's counters are thread-safe, so concurrent requests
share one Refiner.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from bpr.refiner import RefineOptions, Refiner, TooManyPatches
from service.batching import Batcher
from service.metrics import ServiceMetrics

T = TypeVar("T")


class OverBudget(TooManyPatches):
    """The request would cost more network patch forwards than one request may (BPR_MAX_REQUEST_PATCHES).

    Cost = patches per pass x passes x (2 with flip_tta) x (2 with a checkpoint of two refiners,
    the network and its companion): what decides how long the network works for one request,
    whichever parameter makes it large."""

    def __init__(self, needed: int, passes: int, tta: bool, budget: int, networks: int = 1) -> None:
        factor = forwards_per_patch(passes, tta, networks)
        tta_words = (" x 2 (flip_tta)" if tta else "") + (f" x {networks} (refiners)" if networks > 1 else "")
        super().__init__(needed, budget // factor)
        self.args = (
            f"this request needs {needed} boundary patches per pass x {passes} pass(es){tta_words} = "
            f"{needed * factor} network patch forwards, over the budget of {budget} per request "
            "(BPR_MAX_REQUEST_PATCHES); lower it with nms_iou nearer the default 0.25, fewer iterations, "
            "flip_tta=false, or fewer or smaller instances",
        )
        self.budget, self.forwards = budget, needed * factor


def forwards_per_patch(passes: int, tta: bool, networks: int) -> int:
    """Network forwards one boundary patch costs: a pass each, mirrored too with flip TTA, in
    each of the checkpoint's refiners (a companion's forward is counted whether or not the gate
    lets a patch skip it)."""
    return passes * (2 if tta else 1) * networks


@dataclass(frozen=True)
class Refined:
    """One request's refinement: the masks and what it cost (sent back as response headers)."""

    masks: np.ndarray  # (N, H, W) bool, in the order given
    patches: int  # boundary patches over all passes
    passes: int
    seconds: float  # from the first extraction to the last reassembly, network waits included


class RefineEngine:
    """Owns the CPU pool and the network batcher for one Refiner."""

    def __init__(
        self,
        refiner: Refiner,
        metrics: ServiceMetrics,
        cpu_workers: int = 2,
        max_wait_ms: float = 5.0,
        max_queued_patches: int = 8192,
        max_request_patches: int | None = None,
    ) -> None:
        self.refiner = refiner
        self.max_request_patches = max_request_patches  # network patch forwards per request; None = no budget
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=cpu_workers, thread_name_prefix="bpr-cpu")
        self.batcher = Batcher(refiner, max_wait_ms / 1000.0, max_queued_patches, on_batch=self._on_batch)
        metrics.queue_patches.callback = lambda: self.batcher.pending_patches
        metrics.queue_requests.callback = lambda: self.batcher.pending_jobs

    def start(self) -> None:
        self.batcher.start()

    async def close(self, timeout: float) -> None:
        """Finish queued work, then stop the network thread and the CPU pool."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.batcher.stop, timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the CPU pool (decode, extraction, reassembly, encoding)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def refine(
        self, image: np.ndarray, masks: np.ndarray, options: RefineOptions | None = None, **overrides: Any
    ) -> Refined:
        """image HxWx3 uint8 RGB, masks NxHxW bool -> refined NxHxW bool (same order) and its cost.

        ``options`` / ``overrides``: this request's options, as :meth:`bpr.refiner.Refiner.refine`
        takes them (default: the Refiner's; an override of None keeps the default).

        Raises QueueFull (-> 429) when the patch queue is full, ShuttingDown (-> 503), TooManyPatches
        (-> 422) when one pass alone needs more patches than the queue holds, OverBudget (-> 422)
        when patches x passes x TTA exceed the per-request budget: both are counted after the
        patch placement and before any crop or queueing, so memory and network time per
        request stay bounded by the limits.
        """
        options = self.refiner.resolve(options, **overrides)
        queue_limit = self.batcher.max_queued_patches
        per_pass = queue_limit
        networks = 1 if getattr(self.refiner, "companion_net", None) is None else 2
        if self.max_request_patches is not None:
            cost = forwards_per_patch(options.iterations, options.flip_tta, networks)
            per_pass = min(queue_limit, self.max_request_patches // cost)
        try:
            return await self._refine(image, masks, options, per_pass)
        except TooManyPatches as exc:
            if exc.limit < queue_limit and self.max_request_patches is not None:
                raise OverBudget(
                    exc.needed, options.iterations, options.flip_tta, self.max_request_patches, networks
                ) from None
            raise

    async def _refine(self, image: np.ndarray, masks: np.ndarray, options: RefineOptions, max_patches: int) -> Refined:
        """The pass loop: extraction and reassembly in the CPU pool, patches through the batcher."""
        stage = self.metrics.stage
        started = time.perf_counter()
        flight = await self.cpu(self.refiner.start_numpy, image, masks, options, max_patches)
        job = await self.cpu(flight.advance)
        stage.observe(flight.extract_seconds, "extract")
        while job is not None:
            t0 = time.perf_counter()
            await asyncio.wrap_future(self.batcher.submit(job))  # cancelling this drops the job
            stage.observe(time.perf_counter() - t0, "batch_wait")
            job = await self.cpu(flight.advance)
            stage.observe(flight.reassemble_seconds, "reassemble")
            if job is not None:
                stage.observe(flight.extract_seconds, "extract")
        refined = flight.output().cpu().numpy()
        self.metrics.instances.inc(amount=len(refined))
        return Refined(refined, flight.patches, flight.passes, time.perf_counter() - started)

    # ------------------------------------------------------------------ network side
    def _on_batch(self, patches: int, jobs: int, seconds: float) -> None:
        m = self.metrics
        m.batch_patches.observe(patches)
        m.batch_requests.observe(jobs)
        m.stage.observe(seconds, "network")
        m.patches.inc(amount=patches)
        m.rate.add(patches)
