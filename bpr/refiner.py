"""The Refiner: coarse instance masks + image -> refined masks.

Two doors, as in segment-anything's predictor:

* numpy: ``Refiner().refine(image HxWx3 uint8 RGB, masks NxHxW bool) -> NxHxW bool``, and
  ``refine_many`` which streams many images through shared network batches;
* torch: ``refine_torch(image (3,H,W), masks (N,H,W))`` on tensors already on the device.

Inside, every image goes through the same three stages: extract boundary patches (numpy +
OpenCV), run the network on batches of patches pooled across instances and images, paste the
probabilities back (torch, on the device). The CLI, the service and the training-data builder
all use this class.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.modeling.checkpoint import load_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.patches import extract_patch_corners
from bpr.reassemble import reassemble

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "bpr_default.pt"


def default_checkpoint() -> Path:
    """The bundled default model (override with the BPR_DEFAULT_CHECKPOINT environment variable)."""
    return Path(os.environ.get("BPR_DEFAULT_CHECKPOINT", DEFAULT_CHECKPOINT))


@dataclass
class RefineStats:
    """Running totals, for progress bars, benchmarks and /metrics."""

    images: int = 0
    instances: int = 0
    patches: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"extract": 0.0, "network": 0.0, "reassemble": 0.0})


@dataclass
class Job:
    """One image in flight: its patches, and the probabilities filled in batch by batch."""

    coarse: torch.Tensor  # (N, Hp, Wp) bool, padded to at least the patch size
    height: int
    width: int
    corners: np.ndarray  # (P, 2) [y0, x0]
    instance_ids: np.ndarray  # (P,)
    image_patches: torch.Tensor  # (P, 3, S, S) float 0..255
    mask_patches: torch.Tensor  # (P, 1, S, S) float {0, 1}
    probs: torch.Tensor  # (P, S, S)
    remaining: int


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

    Arguments:
        checkpoint: bpr or original-BPR checkpoint; None = the bundled default model.
        device: "cpu", "cuda", "cuda:1"...; fp16 autocast is used on CUDA.
        batch_size: patches per network forward pass.
        nms_iou: patch NMS threshold (0.25 sparse, 0.55 dense: more patches, slower).
        patch_size / input_size: override the checkpoint's (image pixels cut / network input).
        cover_all: add patches until every boundary pixel is covered (see patches.py).
        resolve_overlaps: give newly gained pixels claimed twice to the likelier instance.
        flip_tta: also run every patch mirrored and average the two probabilities (2x network
            time; steadier boundaries). None = what the checkpoint recommends (its config).
        precision: "auto" (fp16 autocast on CUDA, fp32 on CPU), "fp32", "bf16" (about 1.7x
            faster on CPUs with AVX512-BF16/AMX; the default model was trained in bf16) or "fp16".
        iterations: refinement passes; each pass places patches on the boundary the previous
            one produced, so errors deeper than half a patch get a second look (None = what the
            checkpoint recommends; each pass costs a full refinement).
        net: an already built RefinerNet (tests, training); replaces ``checkpoint``.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        nms_iou: float = 0.25,
        patch_size: int | None = None,
        input_size: int | None = None,
        cover_all: bool = True,
        resolve_overlaps: bool = True,
        precision: str = "auto",
        flip_tta: bool | None = None,
        iterations: int | None = None,
        net: RefinerNet | None = None,
    ) -> None:
        self.device = torch.device(device)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise BprInputError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise BprInputError("fp16 precision needs a CUDA device; use bf16 on CPU")
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BprInputError("--device cuda was asked for, but PyTorch sees no CUDA device")
        if batch_size < 1:
            raise BprInputError(f"batch size must be at least 1, got {batch_size}")
        if not 0.0 < nms_iou <= 1.0:
            raise BprInputError(f"NMS IoU threshold must be in (0, 1], got {nms_iou}")
        if net is None:
            path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
            if checkpoint is None and not path.is_file():
                raise ModelNotAvailableError(
                    f"no trained model is bundled yet ({path} is missing); pass --checkpoint PATH "
                    "(a bpr checkpoint from bpr-train, or an original BPR .pth)"
                )
            overrides = {"input_size": input_size} if input_size else None
            net = load_refiner(path, device=self.device, overrides=overrides)
            self.checkpoint = str(path)
        else:
            net = net.to(self.device).eval()
            self.checkpoint = None
        self.net = net
        self.flip_tta = net.config.flip_tta if flip_tta is None else flip_tta
        self.iterations = net.config.iterations if iterations is None else iterations
        if self.iterations < 1:
            raise BprInputError(f"iterations must be at least 1, got {self.iterations}")
        self.patch_size = patch_size or net.config.patch_size
        if self.patch_size < 4:
            raise BprInputError(f"patch size must be at least 4 pixels, got {self.patch_size}")
        self.batch_size = batch_size
        self.nms_iou = nms_iou
        self.cover_all = cover_all
        self.resolve_overlaps = resolve_overlaps
        self.stats = RefineStats()

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    # ------------------------------------------------------------------ numpy door
    def refine(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Refine the masks of one image.

        image: HxWx3 uint8 RGB; masks: NxHxW bool (or 0/1). Returns NxHxW bool, same order.
        Empty masks and masks without a boundary come back unchanged.
        """
        return next(iter(self.refine_many([(image, masks)])))

    def refine_many(self, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Refine a stream of (image, masks) pairs; yields refined masks in input order.

        Patches of consecutive images share network batches, so a batch is always full
        except for the very last one. With several iterations the passes are chained lazily:
        pass 2 takes each image as soon as pass 1 has finished it.
        """
        stream = self._one_pass(items)
        for _ in range(self.iterations - 1):
            stream = self._one_pass(stream)
        for _, masks in stream:
            yield masks

    def _one_pass(self, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One refinement pass over a stream: yields (image, refined masks) in input order."""
        jobs: deque[tuple[Job, np.ndarray]] = deque()
        feed: deque[tuple[Job, int]] = deque()  # (job, first unprocessed patch)
        queued = 0
        for image, masks in items:
            image, masks = check_inputs(image, masks)
            job = self.prepare(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(masks))
            jobs.append((job, image))
            if job.remaining:
                feed.append((job, 0))
                queued += job.remaining
            while queued >= self.batch_size:
                queued -= self.run_batch(feed)
            while jobs and jobs[0][0].remaining == 0:
                job, image = jobs.popleft()
                yield image, self.finish(job).cpu().numpy()
        while feed:
            self.run_batch(feed)
        while jobs:
            job, image = jobs.popleft()
            yield image, self.finish(job).cpu().numpy()

    # ------------------------------------------------------------------ torch door
    def refine_torch(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """image: (3, H, W) uint8 or float 0..255 RGB; masks: (N, H, W) bool. Returns (N, H, W) bool."""
        if image.ndim != 3 or image.shape[0] != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise BprInputError(f"expected image (3, H, W) and masks (N, H, W), got {tuple(image.shape)}, {tuple(masks.shape)}")
        masks = masks.bool()
        for _ in range(self.iterations):
            job = self.prepare(image, masks)
            feed = deque([(job, 0)]) if job.remaining else deque()
            while feed:
                self.run_batch(feed)
            masks = self.finish(job)
        return masks

    # ------------------------------------------------------------------ stages
    # prepare -> run_batch (repeatedly, over a feed shared by many jobs) -> finish. Public so
    # the service's dynamic batcher can pool patches of concurrent requests into one batch.
    def prepare(self, image: torch.Tensor, masks: torch.Tensor) -> Job:
        """Extraction: boundary patches of every instance, cropped from image and mask."""
        t0 = time.perf_counter()
        s = self.patch_size
        _, height, width = image.shape
        pad_h, pad_w = max(0, s - height), max(0, s - width)
        masks_np = masks.cpu().numpy() if masks.device.type != "cpu" else masks.numpy()
        if pad_h or pad_w:  # images smaller than a patch: replicate the edge, crop back later
            masks_np = np.pad(masks_np, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
            image_np = image.permute(1, 2, 0).cpu().numpy()
            image_np = cv2.copyMakeBorder(image_np, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
            image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1)
        per_instance = [extract_patch_corners(m, s, self.nms_iou, self.cover_all) for m in masks_np]
        corners = np.concatenate(per_instance) if per_instance else np.zeros((0, 2), dtype=np.int64)
        instance_ids = np.repeat(np.arange(len(per_instance)), [len(c) for c in per_instance])

        dev = self.device
        coarse = torch.from_numpy(np.ascontiguousarray(masks_np)).to(dev)
        image = image.to(dev)
        ar = torch.arange(s, device=dev)
        rows = (torch.as_tensor(corners[:, 0], device=dev)[:, None] + ar)[:, :, None]  # (P, S, 1)
        cols = (torch.as_tensor(corners[:, 1], device=dev)[:, None] + ar)[:, None, :]  # (P, 1, S)
        image_patches = image[:, rows, cols].permute(1, 0, 2, 3).float()  # (P, 3, S, S)
        ids = torch.as_tensor(instance_ids, device=dev)[:, None, None]
        mask_patches = coarse[ids, rows, cols][:, None].float()  # (P, 1, S, S)
        n_patches = len(corners)
        job = Job(
            coarse=coarse,
            height=height,
            width=width,
            corners=corners,
            instance_ids=instance_ids,
            image_patches=image_patches,
            mask_patches=mask_patches,
            probs=torch.empty((n_patches, s, s), device=dev),
            remaining=n_patches,
        )
        self.stats.images += 1
        self.stats.instances += masks.shape[0]
        self.stats.patches += n_patches
        self.stats.seconds["extract"] += time.perf_counter() - t0
        return job

    @torch.inference_mode()
    def run_batch(self, feed: deque[tuple[Job, int]]) -> int:
        """Network: one forward pass over up to batch_size patches from the front of the feed."""
        t0 = time.perf_counter()
        parts: list[tuple[Job, int, int]] = []
        taken = 0
        while feed and taken < self.batch_size:
            job, start = feed.popleft()
            end = min(job.image_patches.shape[0], start + self.batch_size - taken)
            parts.append((job, start, end))
            taken += end - start
            if end < job.image_patches.shape[0]:
                feed.appendleft((job, end))
        images = torch.cat([j.image_patches[a:b] for j, a, b in parts])
        masks = torch.cat([j.mask_patches[a:b] for j, a, b in parts])
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            probs = self.net.foreground_probability(images, masks)
            if self.flip_tta:
                probs = 0.5 * (probs + self.net.foreground_probability(images.flip(-1), masks.flip(-1)).flip(-1))
        offset = 0
        for job, a, b in parts:
            job.probs[a:b] = probs[offset : offset + b - a]
            job.remaining -= b - a
            offset += b - a
        self.stats.batches += 1
        self.stats.seconds["network"] += time.perf_counter() - t0
        return taken

    def finish(self, job: Job) -> torch.Tensor:
        """Reassembly: paste probabilities back and crop any padding away."""
        t0 = time.perf_counter()
        refined = reassemble(job.coarse, job.corners, job.instance_ids, job.probs, self.resolve_overlaps)
        refined = refined[:, : job.height, : job.width]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.seconds["reassemble"] += time.perf_counter() - t0
        return refined
