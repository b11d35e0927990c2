"""The patch feed: jobs waiting for the network, cut into batches of at most ``batch_size`` patches.

A :class:`Job` is one pass over one image: the boundary patches extraction cut from it and
the probabilities the network fills in, batch by batch, until reassembly pastes them back.
Every door that pools patches of several images into shared forward passes (``refine_many``,
the service's dynamic batcher) queues jobs here and takes batches from the front; the rule of
what goes into a batch lives only here, so nobody re-derives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from bpr.options import RefineOptions


@dataclass
class Job:
    """One pass over one image: its patches, and the probabilities filled in batch by batch."""

    coarse: torch.Tensor  # (N, Hp, Wp) bool on the device, padded to at least the patch size
    height: int
    width: int
    corners: np.ndarray  # (P, 2) [y0, x0]
    instance_ids: np.ndarray  # (P,)
    # (P, 3, V, V) 0..255 in the image's dtype (uint8 from every door): the patch, or its view
    # with context (V = S + 2c); the batch makes them float
    image_patches: torch.Tensor
    mask_patches: torch.Tensor  # (P, 1, V, V) bool
    probs: torch.Tensor  # (P, S, S): the patch's own pixels
    options: RefineOptions  # this pass's rules (flip TTA, the gate, reassembly's overlap and margin rules)
    remaining: int  # patches whose probabilities are not filled in yet
    extract_seconds: float = 0.0
    extents: np.ndarray | None = None  # (N, 4) [y0, x0, y1, x1) box of each coarse mask, found once by extraction
    view_offsets: np.ndarray | None = None  # (P, 2) [dy, dx] of each patch inside its view; None without context
    # (P, S, S) the probabilities before the quality gate replaced any patch with its coarse mask;
    # kept only when the options' ungated_shift applies (reassembly chooses per instance)
    ungated: torch.Tensor | None = None
    ungated_chosen: np.ndarray | None = None  # (N,) bool, set by reassembly: the instances given their ungated answer

    @property
    def num_patches(self) -> int:
        return len(self.corners)


@dataclass(frozen=True)
class PatchBatch:
    """One forward pass worth of patches: slices ``[start, end)`` of the jobs' patch arrays."""

    parts: tuple[tuple[Job, int, int], ...]

    @property
    def size(self) -> int:
        return sum(end - start for _, start, end in self.parts)

    @property
    def num_jobs(self) -> int:
        return len(self.parts)

    def completed(self) -> list[Job]:
        """Jobs whose last patch was in this batch (valid once the batch has run)."""
        return [job for job, _, end in self.parts if end == job.num_patches]


class PatchFeed:
    """FIFO of jobs with patches still to run; ``take`` cuts the next batch off the front."""

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self._queue: deque[tuple[Job, int]] = deque()  # (job, first patch not yet taken)
        self.queued = 0  # patches not yet taken

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, job: Job) -> None:
        """Queue all of a job's patches (a job without patches is not queued)."""
        if job.num_patches:
            self._queue.append((job, 0))
            self.queued += job.num_patches

    def take(self) -> PatchBatch:
        """The next batch: up to ``batch_size`` patches, oldest job first, removed from the feed."""
        parts: list[tuple[Job, int, int]] = []
        room = self.batch_size
        while self._queue and room > 0:
            job, start = self._queue.popleft()
            end = min(job.num_patches, start + room)
            parts.append((job, start, end))
            room -= end - start
            if end < job.num_patches:
                self._queue.appendleft((job, end))
        batch = PatchBatch(tuple(parts))
        self.queued -= batch.size
        return batch

    def discard(self, jobs: Iterable[Job]) -> int:
        """Drop these jobs' untaken patches (their requests gave up); returns how many were dropped."""
        gone = {id(job) for job in jobs}
        dropped = sum(job.num_patches - start for job, start in self._queue if id(job) in gone)
        self._queue = deque((job, start) for job, start in self._queue if id(job) not in gone)
        self.queued -= dropped
        return dropped

    def clear(self) -> None:
        self._queue.clear()
        self.queued = 0
