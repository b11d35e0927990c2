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

import numpy as np
import torch


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


def reassemble(
    coarse: torch.Tensor,
    corners: np.ndarray,
    instance_ids: np.ndarray,
    probs: torch.Tensor,
    resolve_overlaps: bool = True,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Paste patch probabilities back.

    coarse: (N, H, W) bool; corners: (P, 2) int [y0, x0]; instance_ids: (P,) int in [0, N);
    probs: (P, S, S) float foreground probability per patch. Returns (N, H, W) bool.
    """
    refined = coarse.clone()
    n = coarse.shape[0]
    if len(corners) == 0:
        return refined
    device = probs.device
    size = probs.shape[-1]
    regions = instance_regions(corners, instance_ids, size, n)
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
        torch.as_tensor(base, device=device)[:, None, None]
        + ar[None, :, None] * w_t[:, None, None]
        + ar[None, None, :]
    ).reshape(-1)
    total = int(offsets[-1])
    sums = torch.zeros(total, device=device, dtype=torch.float32).index_add_(0, index, probs.reshape(-1).float())
    counts = torch.zeros(total, device=device, dtype=torch.float32).index_add_(
        0, index, torch.ones_like(index, dtype=torch.float32)
    )

    probabilities: dict[int, torch.Tensor] = {}
    for i in np.flatnonzero(heights > 0):
        y0, x0, y1, x1 = (int(v) for v in regions[i])
        h, w = y1 - y0, x1 - x0
        s = sums[offsets[i] : offsets[i + 1]].view(h, w)
        c = counts[offsets[i] : offsets[i + 1]].view(h, w)
        old = coarse[i, y0:y1, x0:x1]
        prob = torch.where(c > 0, s / c.clamp(min=1), old.float())
        refined[i, y0:y1, x0:x1] = torch.where(c > 0, prob > threshold, old)
        probabilities[int(i)] = prob
    if resolve_overlaps and n > 1:
        _resolve_gained_overlaps(coarse, refined, regions, probabilities)
    return refined


def _resolve_gained_overlaps(
    coarse: torch.Tensor, refined: torch.Tensor, regions: np.ndarray, probabilities: dict[int, torch.Tensor]
) -> None:
    """Drop newly gained pixels that another, more confident instance also claims (in place)."""
    claims = refined.sum(dim=0, dtype=torch.int16)
    if not bool((claims > 1).any()):
        return
    best = torch.zeros(coarse.shape[1:], device=coarse.device, dtype=torch.float32)
    for i in range(coarse.shape[0]):
        if i in probabilities:
            y0, x0, y1, x1 = (int(v) for v in regions[i])
            view = best[y0:y1, x0:x1]
            torch.maximum(view, probabilities[i] * refined[i, y0:y1, x0:x1], out=view)
        else:  # no patches: the coarse mask stands, with full confidence
            torch.maximum(best, refined[i].float(), out=best)
    for i, prob in probabilities.items():
        y0, x0, y1, x1 = (int(v) for v in regions[i])
        region = refined[i, y0:y1, x0:x1]
        gained = region & ~coarse[i, y0:y1, x0:x1]
        lose = gained & (claims[y0:y1, x0:x1] > 1) & (prob < best[y0:y1, x0:x1])
        region &= ~lose
