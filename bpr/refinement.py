"""The pass loop: one image through every refinement pass, the loop that every door drives.

A :class:`Refinement` holds one image's state between passes (the masks so far, the pixels
the first pass reached, the instances left out) and the pass rules (``min_area``,
``confine_passes``, ``fallback_iou``). It runs no network itself: each ``advance`` finishes
the pass whose patches the network has filled in and extracts the next pass's
:class:`bpr.feed.Job`, so the same loop serves one image at a time (``Refiner.refine_torch``),
a stream sharing batches (``Refiner.refine_many``) and the service, whose network thread pools
the Jobs of many requests.
"""

from __future__ import annotations

import time
from typing import Protocol

import cv2
import numpy as np
import torch

from bpr.feed import Job
from bpr.options import RefineOptions, RefineStats
from bpr.patches import mask_extents
from bpr.reassemble import claim_boxes, instance_regions, patch_reach


class PassSteps(Protocol):
    """What the loop drives: a :class:`bpr.refiner.Refiner`'s extraction and reassembly steps
    (:mod:`bpr.passes` with its device and counters), its patch size and its counters."""

    patch_size: int
    stats: RefineStats

    def prepare(
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        options: RefineOptions,
        active: np.ndarray | None = None,
        max_patches: int | None = None,
    ) -> Job: ...

    def finish(self, job: Job) -> torch.Tensor: ...


def pixel_counts(masks: torch.Tensor) -> torch.Tensor:
    """(N,) int64 foreground pixels of each (N, H, W) bool mask.

    On the CPU numpy's whole-array count_nonzero (a vectorised byte count) does it mask by
    mask: 20 full-size 1024x2048 masks take 2.5 ms, where a torch sum over bools (which
    widens every element first) takes 120 and count_nonzero with ``axis`` (a widening sum too) 19.
    """
    if masks.device.type == "cpu":
        return torch.tensor([np.count_nonzero(m) for m in masks.numpy()], dtype=torch.int64)
    return masks.flatten(1).sum(1)


class Refinement:
    """One image through every refinement pass: the one pass loop that every door drives.

    ``advance()`` finishes the pass whose patches the network has just filled in (if any),
    applies the pass rules, and prepares the next pass; it returns that pass's :class:`Job`
    (queue its patches, run them, call ``advance`` again) or None once ``result`` is ready.
    Each call is a CPU-side step, so the service runs them in its worker pool while the
    network thread serves other requests.
    """

    def __init__(
        self,
        refiner: PassSteps,
        image: torch.Tensor,
        masks: torch.Tensor,
        options: RefineOptions,
        max_patches: int | None = None,
    ) -> None:
        self.refiner = refiner
        self.options = options
        self.max_patches = max_patches  # a pass needing more patches raises TooManyPatches before any crop
        self.image = image  # (3, H, W) on the device
        self.input = masks  # (N, H, W) bool on the device
        self.masks = masks
        self.passes = 0
        self.patches = 0  # boundary patches over all passes (the service reports them per request)
        self.reach_boxes = np.zeros((masks.shape[0], 4), dtype=np.int64)  # box of every instance's patches, all passes
        self.job: Job | None = None
        self.result: torch.Tensor | None = None
        self.reach: torch.Tensor | None = None  # pixels the first pass's patches covered
        self.active: np.ndarray | None = None  # instances to refine (None = all)
        self.input_extents: np.ndarray | None = None  # boxes of the input masks, from the first pass's extraction
        # instances some pass gave their ungated answer (ungated_shift), counted once each at the end
        self.ungated = np.zeros(masks.shape[0], dtype=bool)
        self.reverted: list[int] = []  # instances the fallback rule returned as given
        self.extract_seconds = 0.0  # of the last advance, for the service's stage metrics
        self.reassemble_seconds = 0.0
        small = 0
        # the input's pixel counts, once, for the rules that need them (minimum area, fallback)
        needed = (options.min_area > 0 or options.fallback_iou > 0) and masks.shape[0]
        self.input_areas = pixel_counts(masks) if needed else None
        if options.min_area > 0 and self.input_areas is not None:
            areas = self.input_areas.cpu().numpy()
            self.active = areas >= options.min_area
            small = int((~self.active & (areas > 0)).sum())
        refiner.stats.add(images=1, instances=int(masks.shape[0]), small=small)

    @property
    def done(self) -> bool:
        return self.result is not None

    def output(self) -> torch.Tensor:
        """The refined (N, H, W) bool masks; only once ``advance`` has returned None."""
        if self.result is None:
            raise RuntimeError("the refinement is not finished: call advance() until it returns None")
        return self.result

    def advance(self) -> Job | None:
        """Finish the pass just run (if any) and extract the next; its Job, or None when done."""
        self.extract_seconds = self.reassemble_seconds = 0.0
        if self.job is not None:
            t0 = time.perf_counter()
            self._end_pass(self.job, self.refiner.finish(self.job))
            self.reassemble_seconds = time.perf_counter() - t0
            self.job = None
        if self.passes < self.options.iterations:
            job = self.refiner.prepare(self.image, self.masks, self.options, self.active, self.max_patches)
            self.extract_seconds = job.extract_seconds
            if self.passes == 0:
                self.input_extents = job.extents
            if job.num_patches:
                self.job = job
                self.patches += job.num_patches
                self.reach_boxes = _union_boxes(
                    self.reach_boxes,
                    instance_regions(job.corners, job.instance_ids, self.refiner.patch_size, len(self.reach_boxes)),
                )
                return job
            # no boundary left to patch: no later pass can change anything either
        self.result = self._fall_back(self._keep_thin(self._anchor_growth(self.masks)))
        self.ungated[self.reverted] = False
        if self.ungated.any():
            self.refiner.stats.add(ungated=int(self.ungated.sum()))
        return None

    def _end_pass(self, job: Job, refined: torch.Tensor) -> None:
        if job.ungated_chosen is not None:
            self.ungated |= job.ungated_chosen
        if self.options.confine_passes and self.options.iterations > 1:
            if self.passes == 0:
                self.reach = patch_reach(
                    job.coarse.shape, job.corners, job.instance_ids, job.probs.shape[-1], job.coarse.device
                )
                self.reach = self.reach[:, : job.height, : job.width]
            elif self.reach is not None:
                refined = torch.where(self.reach, refined, self.masks)
        self.masks = refined
        self.passes += 1

    def _instance_boxes(self) -> list[tuple[int, int, int, int]]:
        """Per instance, the box of its input mask and its patches, clipped to the image: every
        pixel refinement can have changed lies inside it."""
        _, height, width = self.input.shape
        if self.input_extents is None:
            self.input_extents = mask_extents(self.input.cpu().numpy())
        boxes = claim_boxes(self.input_extents, self.reach_boxes).tolist()
        return [(y0, x0, min(y1, height), min(x1, width)) for y0, x0, y1, x1 in boxes]

    def _anchor_growth(self, refined: torch.Tensor) -> torch.Tensor:
        """With ``fragment_reach`` at 0 or more, pixels refinement added to an instance stay only
        where they connect to its input mask's largest part or lie within that many pixels of
        the input.

        A patch sees a fragment of the input mask (a detector's stray blob on a neighbour) as
        the visible part of an object and completes that object: on real video predictions the
        frames refinement harmed most were such blobs grown over a passer-by or a wall's
        pattern. A fragment's boundary may still move by the reach, and the fragment shrink or
        vanish (often a fix); it cannot grow further.
        """
        reach = self.options.fragment_reach
        if reach < 0 or refined is self.input or refined.shape[0] == 0:
            return refined
        for i, (y0, x0, y1, x1) in enumerate(self._instance_boxes()):
            if y1 <= y0 or x1 <= x0:
                continue
            r, m = refined[i, y0:y1, x0:x1], self.input[i, y0:y1, x0:x1]
            if not bool(torch.any(r & ~m)):  # nothing added: nothing can have grown
                continue
            kept = anchored(r.cpu().numpy(), m.cpu().numpy(), reach)
            refined[i, y0:y1, x0:x1] = torch.from_numpy(kept).to(refined.device)
        return refined

    def _keep_thin(self, refined: torch.Tensor) -> torch.Tensor:
        """With ``keep_thin`` at r > 0, pixels of an input mask's thin parts (narrower than 2r+1
        pixels) that refinement removed come back, except pixels another instance newly gained
        (resolve_overlaps gave them to the more confident one: no overlap is made here).

        On nearly right masks of DAVIS frames the refiner's worst harm is erasing cords, lines and
        bike frames that the mask kept: a patch sees a thin run of foreground as noise on a
        boundary. Without the quality gate, radius 4 took the frames it made worse from 21% to
        6% (lab/diagnostics/keep_thin.py). The price: thin false parts of a detector's mask, which
        refinement rightly removes, stay too.
        """
        radii = np.full(self.input.shape[0], self.options.keep_thin)
        radii[self.ungated] = max(self.options.keep_thin, self.options.ungated_keep_thin)
        if radii.max(initial=0) <= 0 or refined is self.input or refined.shape[0] == 0:
            return refined
        _, height, width = self.input.shape
        kept = 0
        for i, (y0, x0, y1, x1) in enumerate(self._instance_boxes()):
            radius = int(radii[i])
            if radius <= 0:
                continue
            if y1 <= y0 or x1 <= x0 or not bool(torch.any(self.input[i, y0:y1, x0:x1] & ~refined[i, y0:y1, x0:x1])):
                continue  # nothing removed: nothing to give back
            # the box grown by the radius (within the image), so that the opening sees the
            # background around the mask as the whole image would
            py0, px0 = max(y0 - radius - 1, 0), max(x0 - radius - 1, 0)
            py1, px1 = min(y1 + radius + 1, height), min(x1 + radius + 1, width)
            given = self.input[i, py0:py1, px0:px1].cpu().numpy()
            thin = torch.from_numpy(thin_parts(given, radius)).to(refined.device)
            ys, xs = torch.nonzero(thin & ~refined[i, py0:py1, px0:px1], as_tuple=True)
            if len(ys) == 0:
                continue
            ys, xs = ys + py0, xs + px0
            # a pixel another instance newly gained (and won, resolve_overlaps) stays that one's
            claimed = refined[:, ys, xs] & ~self.input[:, ys, xs]
            claimed[i] = False
            free = ~claimed.any(0)
            if bool(free.any()):
                refined[i, ys[free], xs[free]] = True
                kept += 1
        if kept:
            self.refiner.stats.add(thin_kept=kept)
        return refined

    def _fall_back(self, refined: torch.Tensor) -> torch.Tensor:
        """Instances the refinement emptied or changed beyond ``fallback_iou`` come back as input.

        Refinement adds pixels only inside an instance's own patches and otherwise only takes
        pixels away, so each IoU is counted inside the box of its input mask and its patches,
        not over the whole image (20 full-size 1024x2048 masks: 2 ms instead of 70).
        """
        if self.options.fallback_iou <= 0 or refined is self.input or refined.shape[0] == 0:
            return refined
        assert self.input_areas is not None  # counted in __init__ whenever fallback_iou > 0 and there are masks
        areas = self.input_areas.tolist()
        lost = []
        for i, (y0, x0, y1, x1) in enumerate(self._instance_boxes()):
            if areas[i] == 0:
                continue
            r, m = refined[i, y0:y1, x0:x1], self.input[i, y0:y1, x0:x1]
            inter = int(torch.count_nonzero(r & m))
            union = areas[i] + int(torch.count_nonzero(r)) - inter
            if inter < self.options.fallback_iou * union:  # emptied: IoU 0
                lost.append(i)
        self.reverted = lost
        if lost:  # refined is this refinement's own tensor (reassembly's copy): restore in place
            index = torch.tensor(lost, device=refined.device)
            refined[index] = self.input[index]
            self.refiner.stats.add(fallbacks=len(lost))
        return refined


def anchored(refined: np.ndarray, given: np.ndarray, reach: int = 0) -> np.ndarray:
    """``refined`` (H, W bool) without the pixels it added to ``given`` that are neither
    connected, within ``refined``, to ``given``'s largest 8-connected part nor within ``reach``
    pixels (Euclidean) of ``given``. An empty ``given`` anchors nothing."""
    given_u8 = given.astype(np.uint8)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(given_u8, connectivity=8)
    if count <= 1:
        return refined & given
    allowed = given
    if reach > 0:  # exact Euclidean distance to the nearest input pixel
        allowed = cv2.distanceTransform(1 - given_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= reach
    body = parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    _, regions = cv2.connectedComponents(refined.astype(np.uint8), connectivity=8)
    anchors = np.unique(regions[body & refined])
    return refined & (allowed | np.isin(regions, anchors[anchors > 0]))


def thin_parts(mask: np.ndarray, radius: int) -> np.ndarray:
    """The pixels of ``mask`` (H, W bool) that an opening with a disk of ``radius`` removes:
    parts narrower than the disk (2 * radius + 1 pixels), the tips of sharp corners and the
    one-pixel bumps of a jagged boundary. The erosion sees foreground beyond the array's edge,
    so an object cut by the edge is not thin there, but a sliver along the edge up to
    ``radius`` pixels deep still is."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk)
    return mask & (opened == 0)


def _union_boxes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise union of two (N, 4) [y0, x0, y1, x1) box arrays; all-zero rows are empty."""
    a_empty, b_empty = a[:, 2] <= a[:, 0], b[:, 2] <= b[:, 0]
    out = np.where(a_empty[:, None], b, a)
    both = ~a_empty & ~b_empty
    out[both, :2] = np.minimum(a[both, :2], b[both, :2])
    out[both, 2:] = np.maximum(a[both, 2:], b[both, 2:])
    return out
