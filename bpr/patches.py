"""Boundary patch extraction: boundary pixels -> candidate squares -> NMS.

Every boundary pixel of a coarse mask proposes a ``patch_size`` square centred on it; greedy
NMS on a boundary score thins them to a set that still follows the whole contour. The NMS IoU
threshold sets the density (0.25 for training data and COCO-like data, 0.55 for more, denser
patches). All candidate squares have the same size, so their IoU only depends on the offset
of their corners; the greedy pass runs in OpenCV's C++ NMS, the candidate generation is numpy.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def boundary_counts(mask: np.ndarray) -> np.ndarray:
    """Number of foreground pixels in each pixel's 3x3 neighbourhood (0..9), as uint8.

    Outside the image the mask is taken to continue (replicated border): the image border is
    not an object boundary, so a mask touching it gets no patches there.
    """
    return cv2.boxFilter(
        mask.astype(np.uint8), ddepth=-1, ksize=(3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE
    )


def boundary_candidates(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary pixels (3x3 neighbourhood holds both classes) and their score.

    Returns (ys, xs, scores) with score = min(#fg, #bg) / 4.5 as in the reference: pixels
    right on a straight edge score highest, lone spurs lowest.
    """
    ys0, xs0, crop = _crop_to_mask(mask)
    if crop is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    counts = boundary_counts(crop)
    ys, xs = np.nonzero((counts > 0) & (counts < 9))
    c = counts[ys, xs].astype(np.float32)
    scores = np.minimum(c, 9.0 - c) / 4.5
    return ys + ys0, xs + xs0, scores


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[y0, x0, y1, x1) bounding box of a bool mask, None if empty (OpenCV: no full-image numpy pass)."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0:
        return None
    return y, x, y + h, x + w


def _crop_to_mask(mask: np.ndarray) -> tuple[int, int, np.ndarray | None]:
    """Crop to the mask's bounding box plus a 1 px margin, so big images cost little."""
    extent = mask_extent(mask)
    if extent is None:
        return 0, 0, None
    y0, x0 = max(extent[0] - 1, 0), max(extent[1] - 1, 0)
    y1, x1 = min(extent[2] + 1, mask.shape[0]), min(extent[3] + 1, mask.shape[1])
    return y0, x0, mask[y0:y1, x0:x1]


def squares_inside(ys: np.ndarray, xs: np.ndarray, patch_size: int, height: int, width: int) -> np.ndarray:
    """Top-left corners (K, 2) [y0, x0] of squares centred on (ys, xs), shifted inside the image.

    A square at the right/bottom edge ends exactly on the last row/column (the reference shifts
    one pixel too far and never refines them). The image must be at least ``patch_size`` on
    each side; the Refiner pads smaller images first.
    """
    if height < patch_size or width < patch_size:
        raise ValueError(f"image {height}x{width} is smaller than the patch size {patch_size}; pad it first")
    half = patch_size // 2
    y0 = np.clip(ys - half, 0, height - patch_size)
    x0 = np.clip(xs - half, 0, width - patch_size)
    return np.stack([y0, x0], axis=1).astype(np.int64)


def nms_squares(corners: np.ndarray, scores: np.ndarray, patch_size: int, iou_threshold: float) -> np.ndarray:
    """Greedy NMS of equal squares; returns kept indices, highest score first.

    Ties are broken by input order (stable), so the result is deterministic. A square is
    dropped when its IoU with an already kept square exceeds ``iou_threshold``.
    """
    if len(corners) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = np.empty((len(corners), 4), dtype=np.int32)
    boxes[:, 0] = corners[:, 1]
    boxes[:, 1] = corners[:, 0]
    boxes[:, 2:] = patch_size
    # OpenCV takes the arrays as they are; its stubs only name sequences
    keep = cv2.dnn.NMSBoxes(boxes, scores.astype(np.float32), 0.0, float(iou_threshold))  # type: ignore[arg-type]
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def nms_squares_reference(corners: np.ndarray, scores: np.ndarray, patch_size: int, iou_threshold: float) -> np.ndarray:
    """Plain greedy NMS, vectorised per kept box: the specification ``nms_squares`` must meet."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(corners), dtype=bool)
    keep = []
    area = float(patch_size * patch_size)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        dy = np.abs(corners[:, 0] - corners[i, 0])
        dx = np.abs(corners[:, 1] - corners[i, 1])
        inter = np.clip(patch_size - dy, 0, None) * np.clip(patch_size - dx, 0, None)
        iou = inter / (2 * area - inter)
        suppressed |= iou > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def coverage_counts(corners: np.ndarray, patch_size: int, height: int, width: int) -> np.ndarray:
    """How many of the squares cover each pixel (HxW int32), via a 2-D difference array."""
    diff = np.zeros((height + 1, width + 1), dtype=np.int32)
    y0, x0 = corners[:, 0], corners[:, 1]
    np.add.at(diff, (y0, x0), 1)
    np.add.at(diff, (y0, x0 + patch_size), -1)
    np.add.at(diff, (y0 + patch_size, x0), -1)
    np.add.at(diff, (y0 + patch_size, x0 + patch_size), 1)
    return diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]


def extract_patch_corners(
    mask: np.ndarray, patch_size: int = 64, nms_iou: float = 0.25, cover_all: bool = True
) -> np.ndarray:
    """Corners (K, 2) [y0, x0] of the boundary patches of one HxW mask; (0, 2) if it has none.

    Plain NMS leaves a few boundary pixels outside every kept square (on DAVIS/OSVOS masks
    at 0.25: 99.7% covered on average, 97.5% at worst), and those keep their coarse value.
    With ``cover_all`` the uncovered candidates go through NMS again, among themselves,
    until every boundary pixel lies in some patch: a handful of extra patches per mask.
    """
    ys, xs, scores = boundary_candidates(mask)
    if len(ys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    corners = squares_inside(ys, xs, patch_size, *mask.shape)
    kept = corners[nms_squares(corners, scores, patch_size, nms_iou)]
    if not cover_all:
        return kept
    # Work in the candidates' bounding region: coverage maps of a whole large image are wasteful.
    oy, ox = int(corners[:, 0].min()), int(corners[:, 1].min())
    region_h = int(corners[:, 0].max()) - oy + patch_size
    region_w = int(corners[:, 1].max()) - ox + patch_size
    offset = np.array([oy, ox])
    rounds = [kept]
    pending = np.ones(len(ys), dtype=bool)
    while True:
        covered = coverage_counts(rounds[-1] - offset, patch_size, region_h, region_w)[ys - oy, xs - ox] > 0
        pending &= ~covered
        if not pending.any():
            return np.concatenate(rounds)
        idx = np.flatnonzero(pending)
        rounds.append(corners[idx][nms_squares(corners[idx], scores[idx], patch_size, nms_iou)])


def crop_squares(
    source: torch.Tensor, corners: np.ndarray, size: int, layers: np.ndarray | None = None
) -> torch.Tensor:
    """The ``size`` squares at ``corners`` (P, 2) [y0, x0], cut from ``source``.

    ``source`` is (C, H, W) (an image: returns (P, C, size, size)) or, with ``layers`` (P,),
    (N, H, W) (one mask per instance: square p is cut from ``source[layers[p]]``, returns
    (P, size, size)). Squares that reach past the bottom or right edge (images smaller than a
    patch) repeat the last row / column. The one cropping routine of bpr: inference patches
    and training patches are both cut here, so they cannot drift apart.
    """
    height, width = source.shape[-2:]
    ar = torch.arange(size, device=source.device)
    y0 = torch.as_tensor(corners[:, 0], device=source.device)
    x0 = torch.as_tensor(corners[:, 1], device=source.device)
    rows = (y0[:, None] + ar).clamp_(max=height - 1)[:, :, None]  # (P, S, 1)
    cols = (x0[:, None] + ar).clamp_(max=width - 1)[:, None, :]  # (P, 1, S)
    if layers is None:
        return source[:, rows, cols].permute(1, 0, 2, 3)
    return source[torch.as_tensor(layers, device=source.device)[:, None, None], rows, cols]


def pad_to_patch(source: torch.Tensor, size: int) -> torch.Tensor:
    """(..., H, W) grown to at least ``size`` x ``size`` by repeating the last row / column."""
    height, width = source.shape[-2:]
    if height >= size and width >= size:
        return source
    rows = torch.arange(max(height, size), device=source.device).clamp_(max=height - 1)
    cols = torch.arange(max(width, size), device=source.device).clamp_(max=width - 1)
    return source[..., rows[:, None], cols[None, :]]
