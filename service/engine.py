"""The library's Refiner behind an async door.

A request goes: extraction (``Refiner.prepare``) in the CPU pool -> its patches into the
shared network batches (:class:`service.batching.Batcher`, one thread) -> reassembly
(``Refiner.finish``) in the CPU pool. The event loop only awaits; it never runs numpy,
OpenCV or torch itself.

``Refiner`` keeps running totals in ``refiner.stats`` and its stage methods are not
thread-safe, so each CPU-pool thread works through its own shallow copy of the Refiner
(a "stage view": same network, same settings, its own ``stats``), and only the network
thread touches the original. Nothing is shared between threads except the read-only
network weights, so extraction of several requests runs in parallel without a lock, and
``stats()`` adds the counters up for /metrics. A per-request NMS threshold is set on the
view of the thread doing that extraction, so it cannot leak into another request.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from bpr.refiner import Job, RefineStats, Refiner, check_inputs
from service.batching import Batcher
from service.metrics import ServiceMetrics

T = TypeVar("T")


class RefineEngine:
    """Owns the CPU pool, the stage views and the network batcher for one Refiner."""

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
        self._local = threading.local()
        self._views: list[Refiner] = []
        self._views_lock = threading.Lock()
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

    async def refine(self, image: np.ndarray, masks: np.ndarray, nms_iou: float | None = None) -> np.ndarray:
        """image HxWx3 uint8 RGB, masks NxHxW bool -> refined NxHxW bool, same order.

        Raises QueueFull (-> 429) when the patch queue is full, ShuttingDown (-> 503).
        """
        stage = self.metrics.stage
        refined = masks
        for _ in range(self.refiner.iterations):  # each pass refines the previous pass's boundary
            t0 = time.perf_counter()
            job = await self.cpu(self._prepare, image, refined, nms_iou)
            t1 = time.perf_counter()
            stage.observe(t1 - t0, "extract")
            if job.remaining:
                await asyncio.wrap_future(self.batcher.submit(job))  # cancelling this drops the job
                stage.observe(time.perf_counter() - t1, "batch_wait")
            t2 = time.perf_counter()
            refined = await self.cpu(self._finish, job)
            stage.observe(time.perf_counter() - t2, "reassemble")
        self.metrics.instances.inc(amount=len(refined))
        return refined

    def stats(self) -> RefineStats:
        """Counters of all stages added up (network thread + every CPU thread)."""
        total = RefineStats()
        with self._views_lock:
            parts = [self.refiner, *self._views]
        for r in parts:
            s = r.stats
            total.images += s.images
            total.instances += s.instances
            total.patches += s.patches
            total.batches += s.batches
            for k, v in s.seconds.items():
                total.seconds[k] = total.seconds.get(k, 0.0) + v
        return total

    # ------------------------------------------------------------------ CPU-pool side
    def _view(self) -> Refiner:
        view = getattr(self._local, "refiner", None)
        if view is None:
            view = copy.copy(self.refiner)  # shares the network; gets its own counters below
            view.stats = RefineStats()
            self._local.refiner = view
            with self._views_lock:
                self._views.append(view)
        return view

    def _prepare(self, image: np.ndarray, masks: np.ndarray, nms_iou: float | None) -> Job:
        view = self._view()
        view.nms_iou = self.refiner.nms_iou if nms_iou is None else nms_iou
        image, masks = check_inputs(image, masks)
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return view.prepare(image_t, torch.from_numpy(np.ascontiguousarray(masks)))

    def _finish(self, job: Job) -> np.ndarray:
        return self._view().finish(job).cpu().numpy()

    # ------------------------------------------------------------------ network side
    def _on_batch(self, patches: int, jobs: int, seconds: float) -> None:
        m = self.metrics
        m.batch_patches.observe(patches)
        m.batch_requests.observe(jobs)
        m.stage.observe(seconds, "network")
        m.patches.inc(amount=patches)
        m.rate.add(patches)
