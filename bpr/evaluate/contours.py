"""Contour accuracy: boundary F-measure with a pixel tolerance (DAVIS F and BPR's AF).

The contour of a mask is its inner 4-connected boundary: foreground pixels with a background
pixel directly above, below, left or right. Unlike the Boundary IoU band, the image border does
not count as background here (DAVIS convention): an object cut by the image edge has no contour
along that edge, since there is no boundary there that a segmenter could get right or wrong.

A contour pixel of one mask is matched when a contour pixel of the other lies within the
tolerance, in Euclidean distance, inclusive (the same as dilating by a disk of that radius, as
the DAVIS toolkit does). Precision = matched predicted contour pixels / predicted contour
pixels, recall = matched ground-truth contour pixels / ground-truth contour pixels, F = their
harmonic mean. Matching is one-to-many, not a one-to-one bipartite assignment.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)


def tolerance_px(height: int, width: int, ratio: float) -> int:
    """Tolerance in pixels: ``ceil(ratio * image diagonal)``, at least 1.

    Ceil (as the DAVIS toolkit does) is what makes 0.00088 x diagonal "3 px at 1024x2048"
    (0.00088 x 2289.7 = 2.01). A 1e-9 slack keeps float noise (3.0000000001) from adding a pixel.
    A ratio >= 1 is taken as a tolerance in pixels, as in the DAVIS toolkit.
    """
    if not ratio > 0:
        raise ValueError(f"tolerance ratio must be > 0, got {ratio}")
    if ratio >= 1:
        return int(math.ceil(ratio - 1e-9))
    return max(1, int(math.ceil(ratio * math.hypot(height, width) - 1e-9)))


def contour(mask: np.ndarray) -> np.ndarray:
    """HxW bool inner 4-connected contour of an HxW bool mask (image border is not contour)."""
    m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    eroded = cv2.erode(m, _CROSS, borderType=cv2.BORDER_REPLICATE)
    return m.astype(bool) & ~eroded.astype(bool)


class FScore(NamedTuple):
    f: float
    precision: float
    recall: float


def _matched(points: np.ndarray, other: np.ndarray, tol: int) -> int:
    """How many True pixels of ``points`` lie within ``tol`` (Euclidean) of a True pixel of ``other``."""
    # distanceTransform measures the distance to the nearest zero pixel: zeros = other's contour.
    dist = cv2.distanceTransform((~other).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int(np.count_nonzero(dist[points] <= tol + 1e-4))


def contour_fscore(pred: np.ndarray, gt: np.ndarray, tol: int) -> FScore:
    """Boundary F-measure of ``pred`` against ``gt`` (HxW bool masks), tolerance ``tol`` px.

    Both contours empty (both masks empty, or both fill the image): F = P = R = 1. Exactly one
    empty: F = 0 (P = 1, R = 0 when the prediction has no contour; P = 0, R = 1 the other way).
    Only the bounding box of both contours is examined: it holds every contour pixel, so the
    distances measured inside it are the true ones.
    """
    cp, cg = contour(pred), contour(gt)
    n_p, n_g = int(np.count_nonzero(cp)), int(np.count_nonzero(cg))
    if n_p == 0 and n_g == 0:
        return FScore(1.0, 1.0, 1.0)
    if n_p == 0:
        return FScore(0.0, 1.0, 0.0)
    if n_g == 0:
        return FScore(0.0, 0.0, 1.0)
    both = cp | cg
    rows = np.flatnonzero(both.any(axis=1))
    cols = np.flatnonzero(both.any(axis=0))
    window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    cp, cg = np.ascontiguousarray(cp[window]), np.ascontiguousarray(cg[window])
    precision = _matched(cp, cg, tol) / n_p
    recall = _matched(cg, cp, tol) / n_g
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return FScore(f, precision, recall)
