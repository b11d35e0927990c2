"""The Refiner: coarse instance masks + image -> refined masks.

Two doors, as in segment-anything's predictor:

* numpy: ``Refiner.from_checkpoint().refine(image HxWx3 uint8 RGB, masks NxHxW bool)`` ->
  NxHxW bool, and ``refine_many``, which streams many images through shared network batches;
* torch: ``refine_torch(image (3,H,W), masks (N,H,W))`` on tensors already on the device.

Behind both doors sits one pass loop, :class:`Refinement`: each pass extracts boundary
patches (``prepare``: numpy + OpenCV for the boundary, torch on the device for the crops),
waits for the network to fill in their probabilities (``run_batch`` over a
:class:`bpr.feed.PatchFeed` shared by many images), and pastes them back (``finish``). The
CLI, the service's dynamic batcher and the benchmarks drive the same loop.

How to refine (NMS density, passes, flip TTA, the safety rules) is a per-call
:class:`RefineOptions`; the Refiner itself holds only the network and how to run it, so one
Refiner serves concurrent calls with different options without copies.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from bpr.backends import ProbabilityNet
from bpr.errors import BprInputError
from bpr.feed import Job, PatchBatch, PatchFeed
from bpr.loading import (
    DEFAULT_CHECKPOINT,
    PRECISIONS,
    check_run_settings,
    choose_runtime,
    default_checkpoint,
    early_reject_margin,
    load_checkpoint,
    recommended_options,
)
from bpr.modeling.refiner_net import RefinerNet
from bpr.options import RefineOptions, RefineStats
from bpr.patches import crop_squares, extract_patch_corners, pad_to_patch
from bpr.reassemble import claim_boxes, coarse_extents, instance_regions, patch_reach, reassemble

# What callers import from here, the names now defined beside their job included (re-exported).
__all__ = [
    "DEFAULT_CHECKPOINT",
    "PRECISIONS",
    "Job",
    "PatchBatch",
    "PatchFeed",
    "RefineOptions",
    "RefineStats",
    "Refinement",
    "Refiner",
    "TooManyPatches",
    "check_inputs",
    "default_checkpoint",
    "pixel_counts",
]

class TooManyPatches(BprInputError):
    """A pass needs more boundary patches than the caller allows (checked before any crop)."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"the masks need {needed} boundary patches, over the limit of {limit}")
        self.needed, self.limit = needed, limit


def check_inputs(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise numpy inputs: RGB uint8 image, (N, H, W) bool masks."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise BprInputError(f"image must be HxWx3 (RGB), got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        raise BprInputError(f"image must be uint8 in 0..255, got {image.dtype}")
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise BprInputError(f"masks must be NxHxW, got shape {masks.shape}")
    if masks.shape[1:] != image.shape[:2]:
        raise BprInputError(
            f"mask size {masks.shape[1]}x{masks.shape[2]} (HxW) does not match the image size "
            f"{image.shape[0]}x{image.shape[1]}"
        )
    return image, masks.astype(bool, copy=False)


def pixel_counts(masks: torch.Tensor) -> torch.Tensor:
    """(N,) int64 foreground pixels of each (N, H, W) bool mask.

    On the CPU numpy's count_nonzero does it about 8x faster than a torch sum over bools
    (which widens every element first): 20 full-size 1024x2048 masks take 15 ms, not 120.
    """
    if masks.device.type == "cpu":
        return torch.from_numpy(np.count_nonzero(masks.reshape(masks.shape[0], -1).numpy(), axis=1).astype(np.int64))
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
        self, refiner: "Refiner", image: torch.Tensor, masks: torch.Tensor, options: RefineOptions,
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
        self.extract_seconds = self.reassemble_seconds = 0.0
        if self.job is not None:
            t0 = time.perf_counter()
            self._end_pass(self.job, self.refiner.finish(self.job))
            self.reassemble_seconds = time.perf_counter() - t0
            self.job = None
        if self.passes < self.options.iterations:
            job = self.refiner.prepare(self.image, self.masks, self.options, self.active, self.max_patches)
            self.extract_seconds = job.extract_seconds
            if job.num_patches:
                self.job = job
                self.patches += job.num_patches
                self.reach_boxes = _union_boxes(
                    self.reach_boxes,
                    instance_regions(job.corners, job.instance_ids, self.refiner.patch_size, len(self.reach_boxes)),
                )
                return job
            # no boundary left to patch: no later pass can change anything either
        self.result = self._fall_back(self.masks)
        return None

    def _end_pass(self, job: Job, refined: torch.Tensor) -> None:
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

    def _fall_back(self, refined: torch.Tensor) -> torch.Tensor:
        """Instances the refinement emptied or changed beyond ``fallback_iou`` come back as input.

        Refinement adds pixels only inside an instance's own patches and otherwise only takes
        pixels away, so each IoU is counted inside the box of its input mask and its patches,
        not over the whole image (20 full-size 1024x2048 masks: 2 ms instead of 70).
        """
        if self.options.fallback_iou <= 0 or refined is self.input or refined.shape[0] == 0:
            return refined
        _, height, width = self.input.shape
        boxes = claim_boxes(coarse_extents(self.input.cpu().numpy()), self.reach_boxes)
        areas = self.input_areas.tolist()
        lost = []
        for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
            if areas[i] == 0:
                continue
            y1, x1 = min(y1, height), min(x1, width)
            r, m = refined[i, y0:y1, x0:x1], self.input[i, y0:y1, x0:x1]
            inter = int(torch.count_nonzero(r & m))
            union = areas[i] + int(torch.count_nonzero(r)) - inter
            if inter < self.options.fallback_iou * union:  # emptied: IoU 0
                lost.append(i)
        if lost:  # refined is this refinement's own tensor (reassembly's copy): restore in place
            index = torch.tensor(lost, device=refined.device)
            refined[index] = self.input[index]
            self.refiner.stats.add(fallbacks=len(lost))
        return refined


def _union_boxes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise union of two (N, 4) [y0, x0, y1, x1) box arrays; all-zero rows are empty."""
    a_empty, b_empty = a[:, 2] <= a[:, 0], b[:, 2] <= b[:, 0]
    out = np.where(a_empty[:, None], b, a)
    both = ~a_empty & ~b_empty
    out[both, :2] = np.minimum(a[both, :2], b[both, :2])
    out[both, 2:] = np.maximum(a[both, 2:], b[both, 2:])
    return out


class Refiner:
    """Boundary Patch Refinement with a trained refiner network.

    Build one from a checkpoint with :meth:`Refiner.from_checkpoint` (as segment-anything's
    ``build_sam``), or around a network you already hold with ``Refiner(net)``.

    Arguments:
        net: the refiner network. ``Refiner()``, ``Refiner(path)`` and ``Refiner(checkpoint=path)``
            (no network) are older spellings of ``Refiner.from_checkpoint(path)`` and load the same.
        checkpoint: the file ``net`` was loaded from (what ``from_checkpoint`` passes): bpr's own
            network with its checkpoint gets the automatic backend and fusing below, a module
            handed in alone runs as it is. Without ``net``: the checkpoint to load.
        input_size: override the loaded checkpoint's network input size (only when loading).
        device: "cpu", "cuda", "cuda:1"...; fp16 autocast is used on CUDA.
        precision: "auto" (fp16 autocast on CUDA; bf16 with the openvino backend on a CPU with
            native bf16, where the default model's whole dev table stays within 0.05 points of
            fp32; else fp32), "fp32", "bf16" (about 1.7x faster on CPUs with AVX512-BF16/AMX),
            "fp16" (CUDA) or "int8" (openvino / onnxruntime: the graph statically quantized,
            bpr/backends/quantize.py).
        batch_size: patches per network forward pass.
        patch_size: image pixels cut around the boundary (None = the checkpoint's).
        fuse: run a BatchNorm-folded, channels-last copy of the network
            (:meth:`RefinerNet.fused_for_inference`, about 1.5x faster on a CPU, logits equal
            to ~1e-6). None: for a network loaded from its checkpoint; a network handed in
            runs as it is (your module, and later changes to its weights, are what run).
        backend: what runs the network (bpr.backends): "auto" (OpenVINO, else ONNX Runtime,
            else torch on a CPU; torch on CUDA; a network handed in runs in torch), "torch",
            "openvino" or "onnxruntime" (the network exported to ONNX once and cached).
            None: the ``BPR_BACKEND`` environment variable, else "auto".
        early_reject: with flip TTA and the gate, skip the mirrored forward of patches the gate
            rejects on the plain forward by more than the checkpoint's ``gate_early_reject``
            logits (measured per gate: see :func:`bpr.passes.predict_batch`); False runs every mirror.
        **options: defaults of :class:`RefineOptions` for every call (None = keep); flip_tta,
            iterations, fallback_iou, min_area and change_margin default to what the checkpoint recommends.
    """

    def __init__(
        self,
        net: RefinerNet | str | os.PathLike | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        input_size: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 64,
        patch_size: int | None = None,
        fuse: bool | None = None,
        backend: str | None = None,
        early_reject: bool = True,
        **options: Any,
    ) -> None:
        if net is None or isinstance(net, (str, os.PathLike)):  # the older spellings of from_checkpoint
            net, checkpoint = load_checkpoint(net if net is not None else checkpoint, input_size=input_size, device=device)
        elif input_size:
            raise BprInputError("input_size applies when loading a checkpoint, not to a given network")
        self.device = check_run_settings(device, precision, batch_size)
        self.net = net.to(self.device).eval()
        self.patch_size = patch_size or net.config.patch_size
        if self.patch_size < 4:
            raise BprInputError(f"patch size must be at least 4 pixels, got {self.patch_size}")
        # infer_net computes the probabilities; self.net stays the checkpoint's module (the gate runs on it)
        self.infer_net: ProbabilityNet
        self.backend, self.infer_net, self.precision = choose_runtime(
            self.net, backend, self.device, self.patch_size, precision, fuse, from_checkpoint=checkpoint is not None
        )
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.batch_size = batch_size
        self.options = recommended_options(net, **options)
        self.early_reject = early_reject_margin(net, early_reject)
        self.stats = RefineStats()

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike | None = None, *, input_size: int | None = None,
        device: str | torch.device = "cpu", **kwargs: Any,
    ) -> "Refiner":
        """A Refiner for a bpr or original-BPR checkpoint: the one way to build one from a file.

        checkpoint: the file (None = the bundled default model, :func:`bpr.loading.default_checkpoint`).
        input_size: override the network input size the patch is resized to.
        Every other keyword goes to :class:`Refiner` (device, precision, backend, options...).
        :meth:`bpr.spec.RefinerSpec.build` (bpr-refine, the service, Ray workers) builds with it.
        """
        net, path = load_checkpoint(checkpoint, input_size=input_size, device=device)
        return cls(net, checkpoint=path, device=device, **kwargs)

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    # ------------------------------------------------------------------ numpy door
    def refine(self, image: np.ndarray, masks: np.ndarray, options: RefineOptions | None = None, **overrides: Any) -> np.ndarray:
        """Refine the masks of one image.

        image: HxWx3 uint8 RGB; masks: NxHxW bool (or 0/1). Returns NxHxW bool, same order.
        Empty masks and masks without a boundary come back unchanged. ``options`` /
        ``overrides``: this call's :class:`RefineOptions` (default: the Refiner's).
        """
        return next(iter(self.refine_many([(image, masks)], options, **overrides)))

    def refine_many(
        self, items: Iterable[tuple[np.ndarray, np.ndarray]], options: RefineOptions | None = None, **overrides: Any
    ) -> Iterator[np.ndarray]:
        """Refine a stream of (image, masks) pairs; yields refined masks in input order.

        Patches of consecutive images share network batches, so every batch is full except
        at the very end; an image's next pass starts as soon as its previous pass is done.
        """
        opts = self.resolve(options, **overrides)
        feed = PatchFeed(self.batch_size)
        in_flight: deque[Refinement] = deque()
        owner: dict[int, Refinement] = {}
        source = iter(items)
        exhausted = False
        while True:
            while not exhausted and feed.queued < self.batch_size:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                flight = self.start_numpy(*item, options=opts)
                in_flight.append(flight)
                self._queue_next(flight, feed, owner)
            while in_flight and in_flight[0].done:
                yield in_flight.popleft().output().cpu().numpy()
            if not feed:
                if exhausted and not in_flight:
                    return
                continue
            batch = feed.take()
            self.run_batch(batch)
            for job in batch.completed():
                self._queue_next(owner.pop(id(job)), feed, owner)

    @staticmethod
    def _queue_next(flight: Refinement, feed: PatchFeed, owner: dict[int, Refinement]) -> None:
        job = flight.advance()
        if job is not None:
            owner[id(job)] = flight
            feed.add(job)

    # ------------------------------------------------------------------ torch door
    def refine_torch(
        self, image: torch.Tensor, masks: torch.Tensor, options: RefineOptions | None = None, **overrides: Any
    ) -> torch.Tensor:
        """image: (3, H, W) uint8 or float 0..255 RGB; masks: (N, H, W) bool. Returns (N, H, W) bool."""
        if image.ndim != 3 or image.shape[0] != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise BprInputError(f"expected image (3, H, W) and masks (N, H, W), got {tuple(image.shape)}, {tuple(masks.shape)}")
        flight = Refinement(self, image.to(self.device), masks.to(self.device).bool(), self.resolve(options, **overrides))
        feed = PatchFeed(self.batch_size)
        job = flight.advance()
        while job is not None:
            feed.add(job)
            while feed:
                self.run_batch(feed.take())
            job = flight.advance()
        return flight.output()

    # ------------------------------------------------------------------ the stages
    def resolve(self, options: RefineOptions | None = None, **overrides: Any) -> RefineOptions:
        """This call's options: ``options`` (default: the Refiner's) with ``overrides`` applied."""
        return (options or self.options).updated(**overrides)

    def start_numpy(
        self, image: np.ndarray, masks: np.ndarray, options: RefineOptions | None = None, max_patches: int | None = None
    ) -> Refinement:
        """Check numpy inputs and begin their :class:`Refinement` (nothing computed yet).
        ``max_patches``: a pass that needs more patches raises :class:`TooManyPatches` (the
        service bounds the memory of a request with it)."""
        image, masks = check_inputs(image, masks)
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(self.device)
        masks_t = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)
        return Refinement(self, image_t, masks_t, options or self.options, max_patches)

    def prepare(
        self, image: torch.Tensor, masks: torch.Tensor, options: RefineOptions, active: np.ndarray | None = None,
        max_patches: int | None = None,
    ) -> Job:
        """Extraction: boundary patches of every (active) instance, cropped from image and mask.

        image (3, H, W) and masks (N, H, W) bool are on the device; the boundary search runs
        on a CPU view of the masks (a copy only when the device is not the CPU).
        """
        t0 = time.perf_counter()
        s = self.patch_size
        _, height, width = image.shape
        coarse = pad_to_patch(masks, s)  # images smaller than a patch: the edge repeats
        coarse_np = coarse.cpu().numpy()
        per_instance = [
            extract_patch_corners(m, s, options.nms_iou, options.cover_all)
            if active is None or active[i]
            else np.zeros((0, 2), dtype=np.int64)
            for i, m in enumerate(coarse_np)
        ]
        corners = np.concatenate(per_instance) if per_instance else np.zeros((0, 2), dtype=np.int64)
        instance_ids = np.repeat(np.arange(len(per_instance)), [len(c) for c in per_instance])
        if max_patches is not None and len(corners) > max_patches:
            raise TooManyPatches(len(corners), max_patches)
        image_patches = crop_squares(image, corners, s).float()
        mask_patches = crop_squares(coarse, corners, s, instance_ids)[:, None].float()
        elapsed = time.perf_counter() - t0
        self.stats.add("extract", elapsed, patches=len(corners))
        return Job(
            coarse=coarse,
            height=height,
            width=width,
            corners=corners,
            instance_ids=instance_ids,
            image_patches=image_patches,
            mask_patches=mask_patches,
            probs=torch.empty((len(corners), s, s), device=self.device),
            options=options,
            remaining=len(corners),
            extract_seconds=elapsed,
        )

    @torch.inference_mode()
    def run_batch(self, batch: PatchBatch) -> None:
        """Network: one forward pass over a batch of patches; fills in their jobs' probabilities.

        With flip TTA and the quality gate, the gate first judges each patch on the plain
        forward alone; a patch it rejects by more than ``early_reject`` logits keeps its
        coarse mask without its mirrored forward: a margin the checkpoint carries, chosen
        where the TTA average turned (almost) none of those rejections into acceptances on
        the dev inputs. Every other patch is averaged with its mirror and judged again on
        that average, exactly as without the shortcut.
        """
        t0 = time.perf_counter()
        parts = batch.parts
        images = torch.cat([job.image_patches[a:b] for job, a, b in parts])
        masks = torch.cat([job.mask_patches[a:b] for job, a, b in parts])
        wants_tta = self._row_mask(parts, lambda options: options.flip_tta)
        wants_gate = self._row_mask(parts, self.gate_applies)
        reject = torch.zeros(len(images), dtype=torch.bool, device=self.device)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            probs = self.infer_net.foreground_probability(images, masks)
            early = wants_tta & wants_gate
            if self.early_reject is not None and bool(early.any()):
                reject[early] = self._judge(images, masks, probs, early) <= -self.early_reject
            early_rejected = int(reject.sum())
            mirror = wants_tta & ~reject
            if bool(mirror.any()):
                every = bool(mirror.all())  # no index copies in the common case
                im, mk = (images, masks) if every else (images[mirror], masks[mirror])
                mirrored = self.infer_net.foreground_probability(im.flip(-1), mk.flip(-1)).flip(-1)
                if every:
                    probs = 0.5 * (probs + mirrored)
                else:
                    probs[mirror] = 0.5 * (probs[mirror] + mirrored)
            judge = wants_gate & ~reject
            if bool(judge.any()):
                reject[judge] = self._judge(images, masks, probs, judge) <= 0
        # rejected patches get their coarse mask back as their probability
        probs[reject] = masks[reject, 0].to(probs.dtype)
        offset = 0
        for job, a, b in parts:
            job.probs[a:b] = probs[offset : offset + b - a]
            job.remaining -= b - a
            offset += b - a
        self.stats.add("network", time.perf_counter() - t0, batches=1, gated=int(reject.sum()), early_gated=early_rejected)

    def gate_applies(self, options: RefineOptions) -> bool:
        """Whether ``options`` get the quality gate: asked for, and this network has one."""
        return options.quality_gate and self.net.gate is not None

    def _row_mask(self, parts: tuple, wants: Callable[[RefineOptions], bool]) -> torch.Tensor:
        """(rows,) bool: the batch rows whose job's options ``wants``."""
        picks = torch.tensor([wants(job.options) for job, _, _ in parts], dtype=torch.bool)
        sizes = torch.tensor([b - a for _, a, b in parts])
        return picks.repeat_interleave(sizes).to(self.device)

    def _judge(self, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The gate's logits for the ``rows`` (bool) of a batch (no index copies when all are)."""
        if bool(rows.all()):
            return self.net.change_helps(images, masks, probs)
        return self.net.change_helps(images[rows], masks[rows], probs[rows])

    def finish(self, job: Job) -> torch.Tensor:
        """Reassembly: paste probabilities back and crop any padding away."""
        if job.remaining:
            raise RuntimeError(f"finish() called with {job.remaining} patches of the job not yet run")
        t0 = time.perf_counter()
        o = job.options
        refined = reassemble(job.coarse, job.corners, job.instance_ids, job.probs, o.resolve_overlaps, o.change_margin)
        refined = refined[:, : job.height, : job.width]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.add("reassemble", time.perf_counter() - t0)
        return refined
