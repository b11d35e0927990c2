"""The Refiner: coarse instance masks + image -> refined masks.

Two doors, as in segment-anything's predictor:

* numpy: ``Refiner.from_checkpoint().refine(image HxWx3 uint8 RGB, masks NxHxW bool)`` ->
  NxHxW bool, and ``refine_many``, which streams many images through shared network batches;
* torch: ``refine_torch(image (3,H,W), masks (N,H,W))`` on tensors already on the device.

Behind both doors sits one pass loop, :class:`bpr.refinement.Refinement`: each pass extracts
boundary patches (``prepare``: numpy + OpenCV for the boundary, torch on the device for the
crops), waits for the network to fill in their probabilities (``run_batch`` over a
:class:`bpr.feed.PatchFeed` shared by many images), and pastes them back (``finish``); the
three steps are :mod:`bpr.passes`, run with this Refiner's network, device and counters. The
CLI, the service's dynamic batcher and the benchmarks drive the same loop. Building a
Refiner from a checkpoint (:meth:`Refiner.from_checkpoint`) is :mod:`bpr.loading`.

How to refine (NMS density, passes, flip TTA, the safety rules) is a per-call
:class:`RefineOptions`; the Refiner itself holds only the network and how to run it, so one
Refiner serves concurrent calls with different options without copies.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from bpr import passes
from bpr.backends import ProbabilityNet
from bpr.errors import BprInputError
from bpr.feed import Job, PatchBatch, PatchFeed
from bpr.io.pipeline import prefetch
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
from bpr.passes import TooManyPatches
from bpr.refinement import Refinement, pixel_counts

MAX_FINISHING = 4  # images reassembled behind the network at most; one more waits for the oldest

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
            native bf16, where earlier default models' J, F and street-scene numbers stayed
            within 0.05 points of fp32, and the current one's probabilities on real views stay
            within 0.05; else fp32), "fp32", "bf16"
            (about 1.7x faster on CPUs with AVX512-BF16/AMX),
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
            net, checkpoint = load_checkpoint(
                net if net is not None else checkpoint, input_size=input_size, device=device
            )
        elif input_size:
            raise BprInputError("input_size applies when loading a checkpoint, not to a given network")
        self.device = check_run_settings(device, precision, batch_size)
        self.net = net.to(self.device).eval()
        self.patch_size = patch_size or net.config.patch_size
        if self.patch_size < 4:
            raise BprInputError(f"patch size must be at least 4 pixels, got {self.patch_size}")
        # infer_net computes the probabilities; self.net stays the checkpoint's module (the gate runs on it)
        self.infer_net: ProbabilityNet
        # each patch is cut with its view: the patch and the context around it that the
        # network (or its companion) sees; each network runs at its own crop of it
        self.view_size = self.patch_size + 2 * net.view_context
        self.backend, self.infer_net, self.precision = choose_runtime(
            self.net,
            backend,
            self.device,
            self.patch_size + 2 * net.config.context,
            precision,
            fuse,
            from_checkpoint=checkpoint is not None,
        )
        # the checkpoint's second refiner, if any, through the same backend (bpr.passes.predict_batch averages them)
        self.companion_net: ProbabilityNet | None = None
        if net.companion is not None:
            _, self.companion_net, _ = choose_runtime(
                net.companion, self.backend, self.device, self.view_size, self.precision, fuse, checkpoint is not None
            )
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.batch_size = batch_size
        self.options = recommended_options(net, **options)
        self.early_reject = early_reject_margin(net, early_reject)
        self.stats = RefineStats()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | None = None,
        *,
        input_size: int | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> Refiner:
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
    def refine(
        self, image: np.ndarray, masks: np.ndarray, options: RefineOptions | None = None, **overrides: Any
    ) -> np.ndarray:
        """Refine the masks of one image.

        image: HxWx3 uint8 RGB; masks: NxHxW bool (or 0/1). Returns NxHxW bool, same order.
        Empty masks and masks without a boundary come back unchanged. ``options`` /
        ``overrides``: this call's :class:`RefineOptions` (default: the Refiner's).
        """
        return next(iter(self.refine_many([(image, masks)], options, overlap=False, **overrides)))

    def refine_many(
        self,
        items: Iterable[tuple[np.ndarray, np.ndarray]],
        options: RefineOptions | None = None,
        *,
        overlap: bool = True,
        **overrides: Any,
    ) -> Iterator[np.ndarray]:
        """Refine a stream of (image, masks) pairs; yields refined masks in input order.

        Patches of consecutive images share network batches, so every batch is full except
        at the very end; an image's next pass starts as soon as its previous pass is done.

        overlap: a worker thread checks each next image and extracts its first pass while the
            network runs, and, for one-pass refinement, another reassembles finished images
            behind it (an accelerator, or a CPU backend with cores to spare, then never waits
            on them). Images join the feed in the same order at the same points either way,
            so every batch, and the output, is identical. False runs every step on the calling thread.
        """
        opts = self.resolve(options, **overrides)
        started: Iterator[tuple[Refinement, Job | None]] = (self._begin(image, masks, opts) for image, masks in items)
        if not overlap:
            yield from self._stream(started, None)
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpr-reassemble") if opts.iterations == 1 else None
        try:
            with contextlib.closing(prefetch(started)) as ahead:  # stops the extraction thread on any exit
                yield from self._stream(ahead, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _begin(self, image: np.ndarray, masks: np.ndarray, options: RefineOptions) -> tuple[Refinement, Job | None]:
        """An image's Refinement and its first pass's Job (None: nothing to patch, already done)."""
        flight = self.start_numpy(image, masks, options=options)
        return flight, flight.advance()

    def _stream(
        self, started: Iterator[tuple[Refinement, Job | None]], pool: ThreadPoolExecutor | None
    ) -> Iterator[np.ndarray]:
        """The loop of :meth:`refine_many`: feed started images in while the feed runs short of a
        batch, run batches, advance the images whose pass completed (on ``pool`` if given: only
        for one pass, where that advance reassembles and ends the image and queues nothing)."""
        feed = PatchFeed(self.batch_size)
        in_flight: deque[Refinement] = deque()
        owner: dict[int, Refinement] = {}
        finishing: dict[int, Future[Job | None]] = {}  # id(flight) -> its last advance on the pool, oldest first
        exhausted = False
        while True:
            while not exhausted and feed.queued < self.batch_size:
                begun = next(started, None)
                if begun is None:
                    exhausted = True
                    break
                in_flight.append(begun[0])
                self._queue(*begun, feed, owner)
            while in_flight and _pop_if_finished(in_flight[0], finishing, wait=exhausted and not feed):
                yield in_flight.popleft().output().cpu().numpy()
            if not feed:
                if not exhausted:
                    continue
                if in_flight:  # every image is finished or queued: a bug if not
                    raise RuntimeError(f"refine_many: {len(in_flight)} images neither finished nor queued")
                return
            batch = feed.take()
            self.run_batch(batch)
            for job in batch.completed():
                flight = owner.pop(id(job))
                if pool is None:
                    self._queue(flight, flight.advance(), feed, owner)
                else:
                    finishing[id(flight)] = pool.submit(flight.advance)
            while len(finishing) > MAX_FINISHING:  # memory stays bounded if reassembly falls behind
                _settle(finishing.pop(next(iter(finishing))))

    @staticmethod
    def _queue(flight: Refinement, job: Job | None, feed: PatchFeed, owner: dict[int, Refinement]) -> None:
        if job is not None:
            owner[id(job)] = flight
            feed.add(job)

    # ------------------------------------------------------------------ torch door
    def refine_torch(
        self, image: torch.Tensor, masks: torch.Tensor, options: RefineOptions | None = None, **overrides: Any
    ) -> torch.Tensor:
        """image: (3, H, W) uint8 or float 0..255 RGB; masks: (N, H, W) bool. Returns (N, H, W) bool."""
        if image.ndim != 3 or image.shape[0] != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise BprInputError(
                f"expected image (3, H, W) and masks (N, H, W), got {tuple(image.shape)}, {tuple(masks.shape)}"
            )
        flight = Refinement(
            self, image.to(self.device), masks.to(self.device).bool(), self.resolve(options, **overrides)
        )
        feed = PatchFeed(self.batch_size)
        job = flight.advance()
        while job is not None:
            feed.add(job)
            while feed:
                self.run_batch(feed.take())
            job = flight.advance()
        return flight.output()

    # ------------------------------------------------------------------ the steps of a pass (bpr.passes)
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
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        options: RefineOptions,
        active: np.ndarray | None = None,
        max_patches: int | None = None,
    ) -> Job:
        """Extraction (:func:`bpr.passes.extract_job`) at this Refiner's patch size, counted.

        image (3, H, W) and masks (N, H, W) bool are on the device.
        """
        job = passes.extract_job(
            image, masks, options, self.patch_size, self.device, active, max_patches, self.net.view_context
        )
        self.stats.add("extract", job.extract_seconds, patches=job.num_patches)
        return job

    def run_batch(self, batch: PatchBatch) -> None:
        """The network step (:func:`bpr.passes.predict_batch`): one forward pass over a batch of
        patches, flip TTA and the gate as each job's options ask; fills in the jobs' probabilities."""
        t0 = time.perf_counter()
        gated, early_gated = passes.predict_batch(
            batch, self.net, self.infer_net, self.device, self.precision, self.early_reject, self.companion_net
        )
        self.stats.add("network", time.perf_counter() - t0, batches=1, gated=gated, early_gated=early_gated)

    def gate_applies(self, options: RefineOptions) -> bool:
        """Whether ``options`` get the quality gate: asked for, and this network has one."""
        return passes.gate_applies(self.net, options)

    def finish(self, job: Job) -> torch.Tensor:
        """Reassembly (:func:`bpr.passes.reassemble_job`): paste probabilities back and crop any padding away."""
        t0 = time.perf_counter()
        refined = passes.reassemble_job(job)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time counted is the reassembly's
        self.stats.add("reassemble", time.perf_counter() - t0)
        return refined


def _pop_if_finished(flight: Refinement, finishing: dict[int, Future[Job | None]], wait: bool) -> bool:
    """Whether ``flight`` is done. If its last advance runs on the pool, it counts only once that
    has returned (waited for when ``wait``: nothing else is left to run), and its error, if any,
    is raised here, in input order."""
    future = finishing.get(id(flight))
    if future is not None:
        if not (wait or future.done()):
            return False
        del finishing[id(flight)]
        _settle(future)
    return flight.done


def _settle(future: Future[Job | None]) -> None:
    """Wait for a one-pass image's last advance; raise its error, or if it queued another pass."""
    if future.result() is not None:
        raise RuntimeError("a one-pass refinement asked for another pass")
