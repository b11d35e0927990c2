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

from bpr.refiner import RefineOptions, Refiner
from service.batching import Batcher
from service.metrics import ServiceMetrics

T = TypeVar("T")


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
    ) -> None:
        self.refiner = refiner
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

    async def refine(self, image: np.ndarray, masks: np.ndarray, options: RefineOptions | None = None) -> Refined:
        """image HxWx3 uint8 RGB, masks NxHxW bool -> refined NxHxW bool (same order) and its cost.

        Raises QueueFull (-> 429) when the patch queue is full, ShuttingDown (-> 503), TooManyPatches
        (-> 422) when one pass alone needs more patches than the queue holds: memory per request
        stays bounded by the limits.
        """
        stage = self.metrics.stage
        started = time.perf_counter()
        flight = await self.cpu(self.refiner.start_numpy, image, masks, options, self.batcher.max_queued_patches)
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
