"""Boundary bands and Boundary IoU (Cheng et al., CVPR 2021).

The band of a mask is the mask minus its erosion by a (2d+1) x (2d+1) square, with everything
outside the image counting as background, so an object cut by the image border gets a band
along that border too. Equivalently: the mask pixels whose Chebyshev distance to a background
pixel (or to the outside of the image) is at most ``d``. Boundary IoU is the IoU of two bands.

Bands are computed once per mask, on a crop around the mask (OpenCV's separable erosion), so
the cost does not grow with the number of (detection, ground truth) pairs.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from bpr.io.coco import mask_bounds


def band_width(height: int, width: int, ratio: float) -> int:
    """Band width d in pixels: ``max(1, round(ratio * image diagonal))``.

    ``round`` is Python's (half to even), as in the reference Boundary IoU API, so 2.5 -> 2.
    """
    if not ratio > 0:
        raise ValueError(f"boundary ratio must be > 0, got {ratio}")
    return max(1, int(round(ratio * math.hypot(height, width))))


def _band_crop(mask: np.ndarray, d: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    """The band inside the foreground box ``box`` grown by d + 1 px: (crop, y0, x0).

    Pixels of that crop outside the box are background anyway, so eroding with "outside =
    background" at the crop edge changes nothing, except where the crop edge is the image
    edge, which must count as background.
    """
    if d < 1:
        raise ValueError(f"band width must be >= 1 px, got {d}")
    h, w = mask.shape
    y0, y1 = max(0, box[0] - d - 1), min(h, box[1] + d + 1)
    x0, x1 = max(0, box[2] - d - 1), min(w, box[3] + d + 1)
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    kernel = np.ones((2 * d + 1, 2 * d + 1), dtype=np.uint8)
    eroded = cv2.erode(crop, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return crop > eroded, y0, x0


def boundary_band(mask: np.ndarray, d: int) -> np.ndarray:
    """HxW bool band of width ``d`` px inside ``mask`` (HxW bool); empty mask -> empty band."""
    if d < 1:
        raise ValueError(f"band width must be >= 1 px, got {d}")
    mask = np.asarray(mask, dtype=bool)
    band = np.zeros(mask.shape, dtype=bool)
    box = mask_bounds(mask)
    if box is not None:
        crop, y0, x0 = _band_crop(mask, d, box)
        band[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return band


def band_rle(mask: np.ndarray, d: int, rle: dict[str, Any]) -> dict[str, Any]:
    """Compressed RLE of ``boundary_band(mask, d)``; ``rle`` is the mask's own RLE (for its box).

    Written into a zeroed W x H buffer whose transpose is the Fortran-ordered H x W array
    pycocotools encodes, so no full-image copy or reordering is made per mask.
    """
    h, w = mask.shape
    buf = np.zeros((w, h), dtype=np.uint8)
    bx, by, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
    if bw > 0 and bh > 0:
        crop, y0, x0 = _band_crop(mask, d, (by, by + bh, bx, bx + bw))
        buf[x0 : x0 + crop.shape[1], y0 : y0 + crop.shape[0]] = crop.T
    out = mask_utils.encode(buf.T)
    out["counts"] = out["counts"].decode("ascii")
    return out


def iou(a: np.ndarray, b: np.ndarray, empty: float = 0.0) -> float:
    """IoU of two bool arrays; ``empty`` when both are empty (0 as pycocotools, 1 as DAVIS J)."""
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return empty
    return int(np.count_nonzero(a & b)) / union


def boundary_iou(a: np.ndarray, b: np.ndarray, d: int) -> float:
    """Boundary IoU of two HxW bool masks with band width ``d`` (0 when both are empty).

    A per-pair convenience for tests and single images; AP evaluation uses precomputed bands.
    """
    return iou(boundary_band(a, d), boundary_band(b, d))
