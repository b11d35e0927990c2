"""Patch probabilities -> refined instance masks.

Each instance gets a canvas over the region its patches span. Patch foreground probabilities
are summed into it and divided by the number of patches covering each pixel; the average is
thresholded at 0.5. Pixels no patch covers keep the coarse value, so a refiner that returns
its input mask gives back the input exactly.

Unlike the reference, pixels that refinement newly adds to an instance while another
instance also claims them go to the most confident claimant only (``resolve_overlaps``);
overlaps already present in the coarse masks are the detector's and are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch

from bpr.patches import mask_extents


def instance_regions(corners: np.ndarray, instance_ids: np.ndarray, patch_size: int, num_instances: int) -> np.ndarray:
    """(N, 4) [y0, x0, y1, x1] spanned by each instance's patches; all zeros without patches."""
    regions = np.zeros((num_instances, 4), dtype=np.int64)
    if len(corners) == 0:
        return regions
    order = np.argsort(instance_ids, kind="stable")
    ids, starts = np.unique(instance_ids[order], return_index=True)
    c = corners[order]
    regions[ids, 0] = np.minimum.reduceat(c[:, 0], starts)
    regions[ids, 1] = np.minimum.reduceat(c[:, 1], starts)
    regions[ids, 2] = np.maximum.reduceat(c[:, 0], starts) + patch_size
    regions[ids, 3] = np.maximum.reduceat(c[:, 1], starts) + patch_size
    return regions


def patch_reach(
    shape: tuple[int, ...] | torch.Size,
    corners: np.ndarray,
    instance_ids: np.ndarray,
    size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, H, W) bool: the pixels some patch of each instance covers."""
    n, height, width = shape
    reach = torch.zeros(n * height * width, dtype=torch.bool, device=device)
    if len(corners):
        ar = np.arange(size)
        flat = (
            instance_ids[:, None, None] * (height * width)
            + (corners[:, 0, None, None] + ar[None, :, None]) * width
            + (corners[:, 1, None, None] + ar[None, None, :])
        ).reshape(-1)
        reach[torch.as_tensor(flat, device=device)] = True
    return reach.view(n, height, width)


def decide(old: torch.Tensor, prob: torch.Tensor, margin: float, removal_margin: float | None = None) -> torch.Tensor:
    """Refined value of pixels whose input is ``old`` (bool) and foreground probability ``prob``:
    a pixel leaves its input value only where ``prob`` is beyond 0.5 by more than ``margin``
    (at margin 0: plain ``prob > 0.5``); ``removal_margin``, if given, replaces ``margin`` for
    foreground pixels leaving. The one rule, used by reassembly and the gate's training."""
    leave = margin if removal_margin is None else removal_margin
    keep_fg = prob >= 0.5 - leave if leave > 0 else prob > 0.5
    return torch.where(old, keep_fg, prob > 0.5 + margin)


def copy_masks(masks: torch.Tensor) -> torch.Tensor:
    """A copy of a mask tensor. On the CPU numpy copies 20 full-size 1024x2048 bool masks in
    5 ms where ``Tensor.clone`` takes 20-50 (one thread); elsewhere ``clone``."""
    if masks.device.type == "cpu":
        return torch.from_numpy(masks.numpy().copy())
    return masks.clone()


def reassemble(
    coarse: torch.Tensor,
    corners: np.ndarray,
    instance_ids: np.ndarray,
    probs: torch.Tensor,
    resolve_overlaps: bool = True,
    change_margin: float = 0.0,
    extents: np.ndarray | None = None,
    removal_margins: dict[int, float] | None = None,
) -> torch.Tensor:
    """Paste patch probabilities back.

    coarse: (N, H, W) bool; corners: (P, 2) int [y0, x0]; instance_ids: (P,) int in [0, N);
    probs: (P, S, S) float foreground probability per patch. Returns (N, H, W) bool.
    change_margin: a covered pixel leaves its coarse value only where the mean probability is
    beyond 0.5 by more than this (foreground pixels need p < 0.5 - margin to go, background
    pixels p > 0.5 + margin to join).
    extents: (N, 4) boxes of the coarse masks (:func:`bpr.patches.mask_extents`), if known.
    removal_margins: instance -> the margin its foreground pixels need to leave, where it is
        not ``change_margin`` (the ``ungated_removal_margin`` rule).
    """
    refined = copy_masks(coarse)
    removal_margins = removal_margins or {}
    n = coarse.shape[0]
    regions = instance_regions(corners, instance_ids, probs.shape[-1], n)
    probabilities: dict[int, torch.Tensor] = {}
    for i, (y0, x0, y1, x1), covered, prob in _canvases(coarse, corners, instance_ids, probs, regions):
        old = coarse[i, y0:y1, x0:x1]
        decided = decide(old, prob, change_margin, removal_margins.get(i))
        refined[i, y0:y1, x0:x1] = torch.where(covered, decided, old)
        probabilities[i] = prob
    if resolve_overlaps and n > 1:
        _resolve_gained_overlaps(coarse, refined, regions, probabilities, extents)
    return refined


def _canvases(
    coarse: torch.Tensor, corners: np.ndarray, instance_ids: np.ndarray, probs: torch.Tensor, regions: np.ndarray
) -> Iterator[tuple[int, tuple[int, int, int, int], torch.Tensor, torch.Tensor]]:
    """Per instance with patches: (i, its region [y0, x0, y1, x1), the pixels some patch covers,
    the mean patch probability there and the coarse value elsewhere), all (h, w) over the region."""
    if len(corners) == 0:
        return
    device = probs.device
    size = probs.shape[-1]
    heights = regions[:, 2] - regions[:, 0]
    widths = regions[:, 3] - regions[:, 1]
    offsets = np.concatenate([[0], np.cumsum(heights * widths)])

    # One flat buffer holds every instance's canvas; a patch pixel's slot is
    # offset[instance] + (y - region_y0) * region_w + (x - region_x0).
    base = (
        offsets[instance_ids]
        + (corners[:, 0] - regions[instance_ids, 0]) * widths[instance_ids]
        + (corners[:, 1] - regions[instance_ids, 1])
    )
    ar = torch.arange(size, device=device)
    w_t = torch.as_tensor(widths[instance_ids], device=device)
    index = (
        torch.as_tensor(base, device=device)[:, None, None] + ar[None, :, None] * w_t[:, None, None] + ar[None, None, :]
    ).reshape(-1)
    total = int(offsets[-1])
    sums = torch.zeros(total, device=device, dtype=torch.float32).index_add_(0, index, probs.reshape(-1).float())
    one_each = torch.ones((), device=device).expand(index.shape)  # a view: no buffer as long as the index
    counts = torch.zeros(total, device=device, dtype=torch.float32).index_add_(0, index, one_each)
    for i in np.flatnonzero(heights > 0):
        y0, x0, y1, x1 = (int(v) for v in regions[i])
        h, w = y1 - y0, x1 - x0
        s = sums[offsets[i] : offsets[i + 1]].view(h, w)
        c = counts[offsets[i] : offsets[i + 1]].view(h, w)
        covered = c > 0
        mean = torch.where(covered, s / c.clamp(min=1), coarse[i, y0:y1, x0:x1].float())
        yield int(i), (y0, x0, y1, x1), covered, mean


def changed_pixels(
    coarse: torch.Tensor,
    corners: np.ndarray,
    instance_ids: np.ndarray,
    probs: torch.Tensor,
    change_margin: float = 0.0,
    within: tuple[int, int] | None = None,
) -> np.ndarray:
    """(N,) int64: how many pixels of each coarse mask these patch probabilities would change
    (reassembly's rule, before overlaps between instances are resolved); with ``within`` =
    (height, width), only pixels inside it count (an image padded to the patch size)."""
    changed = np.zeros(coarse.shape[0], dtype=np.int64)
    regions = instance_regions(corners, instance_ids, probs.shape[-1], coarse.shape[0])
    height, width = within if within is not None else coarse.shape[-2:]
    for i, (y0, x0, y1, x1), covered, prob in _canvases(coarse, corners, instance_ids, probs, regions):
        old = coarse[i, y0:y1, x0:x1]
        moved = covered & (decide(old, prob, change_margin) != old)
        changed[i] = int(torch.count_nonzero(moved[: max(0, height - y0), : max(0, width - x0)]))
    return changed


def boundary_length(mask: np.ndarray) -> int:
    """Pixels along the boundary of ``mask`` (H, W bool): the points of its outer and inner
    contours, each pixel step once (OpenCV's border following; beyond the array is background)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return sum(len(c) for c in contours)


def claim_boxes(extents: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Box that holds every pixel an instance can claim: its coarse box joined with its patch region."""
    has_region = regions[:, 2] > regions[:, 0]
    empty = extents[:, 2] == extents[:, 0]
    out = extents.copy()
    out[has_region & empty] = regions[has_region & empty]
    both = has_region & ~empty
    out[both, :2] = np.minimum(extents[both, :2], regions[both, :2])
    out[both, 2:] = np.maximum(extents[both, 2:], regions[both, 2:])
    return out


def _resolve_gained_overlaps(
    coarse: torch.Tensor,
    refined: torch.Tensor,
    regions: np.ndarray,
    probabilities: dict[int, torch.Tensor],
    extents: np.ndarray | None = None,
) -> None:
    """Give every pixel that refinement newly makes shared to its most confident claimant (in place).

    A pixel instance i gained while another instance claims it goes to whichever is more
    confident: i loses it, or the others do. Only pairs whose boxes meet are compared, so
    the cost follows the instances' sizes, not N times the image. Outside its patches an
    instance's pixels count with confidence 1. Overlaps already in the coarse masks are not
    touched (i did not gain those pixels).
    """
    ext = None
    for i, prob in probabilities.items():
        y0, x0, y1, x1 = (int(v) for v in regions[i])
        gained = refined[i, y0:y1, x0:x1] & ~coarse[i, y0:y1, x0:x1]
        if not bool(gained.any()):
            continue
        if ext is None:
            if extents is None:
                extents = mask_extents(coarse.cpu().numpy())
            ext = claim_boxes(extents, regions)
        best_other = torch.full(gained.shape, -1.0, device=prob.device)
        rivals: list[tuple[int, int, int, int, int]] = []
        for j in range(coarse.shape[0]):
            oy0, ox0 = max(y0, int(ext[j, 0])), max(x0, int(ext[j, 1]))
            oy1, ox1 = min(y1, int(ext[j, 2])), min(x1, int(ext[j, 3]))
            if j == i or oy0 >= oy1 or ox0 >= ox1:
                continue
            rivals.append((j, oy0, ox0, oy1, ox1))
            claim = refined[j, oy0:oy1, ox0:ox1]
            conf = claim.float()
            if j in probabilities:  # inside j's patch region its confidence is its probability
                ry0, rx0, ry1, rx1 = (int(v) for v in regions[j])
                iy0, ix0, iy1, ix1 = max(oy0, ry0), max(ox0, rx0), min(oy1, ry1), min(ox1, rx1)
                if iy0 < iy1 and ix0 < ix1:
                    conf[iy0 - oy0 : iy1 - oy0, ix0 - ox0 : ix1 - ox0] = (
                        probabilities[j][iy0 - ry0 : iy1 - ry0, ix0 - rx0 : ix1 - rx0]
                        * claim[iy0 - oy0 : iy1 - oy0, ix0 - ox0 : ix1 - ox0]
                    )
            view = best_other[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
            torch.maximum(view, torch.where(claim, conf, torch.full_like(conf, -1.0)), out=view)
        contested = gained & (best_other >= 0)
        if not bool(contested.any()):
            continue
        refined[i, y0:y1, x0:x1] &= ~(contested & (best_other > prob))
        wins = contested & (prob > best_other)
        for j, oy0, ox0, oy1, ox1 in rivals:
            refined[j, oy0:oy1, ox0:ox1] &= ~wins[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
