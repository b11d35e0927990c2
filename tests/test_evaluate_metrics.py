"""Boundary metrics on tiny hand-made masks; every expected value was worked out by hand.

Conventions pinned here (see docs/metrics.md): Boundary IoU bands count the image border as
boundary and erode with a square (Chebyshev) kernel; d = max(1, round(ratio x diagonal)) with
Python's half-to-even round. Contours for F do not count the image border, are 4-connected,
and match within a Euclidean tolerance, inclusive, ceil(ratio x diagonal) px.
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bpr.evaluate.bands import band_rle, band_width, boundary_band, boundary_iou, iou
from bpr.evaluate.contours import contour, contour_fscore, tolerance_px
from bpr.io.coco import encode_mask


def square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """HxW mask with rows y0..y1 and columns x0..x1 (inclusive) set."""
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


# ---------------------------------------------------------------- band width and rounding


def test_band_width_davis_size():
    # diagonal of 854x480 = 979.63; x 0.02 = 19.59 -> 20
    assert band_width(480, 854, 0.02) == 20


def test_band_width_is_at_least_one_pixel():
    # diagonal of 10x10 = 14.14; x 0.02 = 0.28 -> round 0 -> clamped to 1
    assert band_width(10, 10, 0.02) == 1


def test_band_width_rounds_half_to_even_like_the_reference():
    # 3x4 image: diagonal exactly 5. 0.5 x 5 = 2.5 -> 2 (half to even); 0.7 x 5 = 3.5 -> 4
    assert band_width(3, 4, 0.5) == 2
    assert band_width(3, 4, 0.7) == 4


def test_band_width_rejects_non_positive_ratio():
    with pytest.raises(ValueError):
        band_width(10, 10, 0.0)


# ---------------------------------------------------------------- bands


def test_image_border_counts_as_boundary():
    full = np.ones((6, 6), dtype=bool)
    band1 = boundary_band(full, 1)
    # d=1: the outer ring, 6*6 - 4*4 = 20 pixels; the 4x4 interior is not band
    assert band1.sum() == 20
    assert band1[0].all() and band1[-1].all() and band1[:, 0].all() and band1[:, -1].all()
    assert not band1[1:5, 1:5].any()
    assert boundary_band(full, 2).sum() == 36 - 4  # 2x2 interior left
    assert boundary_band(full, 3).sum() == 36  # everything within 3 px of the border


def test_band_of_object_away_from_border():
    m = square(9, 9, 2, 6, 2, 6)  # 5x5 square
    band = boundary_band(m, 1)
    assert band.sum() == 25 - 9  # its ring, 16 px
    assert not band[~m].any()  # the band lies inside the mask


def test_erosion_kernel_is_square_so_diagonals_count():
    m = np.ones((7, 7), dtype=bool)
    m[3, 3] = False  # a one-pixel hole in the middle
    band = boundary_band(m, 1)
    # the image-border ring (49 - 25 = 24) + the 8 neighbours of the hole, diagonals included
    assert band.sum() == 24 + 8
    assert band[2, 2] and band[2, 4] and band[4, 2] and band[4, 4]  # diagonal neighbours
    assert not band[3, 3]  # the hole itself is background
    assert not band[1, 1]  # Chebyshev distance 2 from the hole, 1 from nothing


def test_empty_mask_has_empty_band_and_zero_boundary_iou():
    empty = np.zeros((8, 8), dtype=bool)
    assert not boundary_band(empty, 2).any()
    assert boundary_iou(empty, empty, 1) == 0.0  # no union: 0, as pycocotools' IoU
    assert boundary_iou(empty, square(8, 8, 2, 5, 2, 5), 1) == 0.0


def test_boundary_iou_of_shifted_square_d1():
    gt = square(20, 20, 5, 14, 5, 14)  # 10x10
    pred = square(20, 20, 5, 14, 6, 15)  # shifted right by 1
    # bands are 36-px rings; they share rows 5 and 14 at columns 6..14 = 18 px
    # union = 36 + 36 - 18 = 54 -> 1/3; mask IoU is 90/110
    assert boundary_iou(pred, gt, 1) == pytest.approx(18 / 54)
    assert iou(pred, gt) == pytest.approx(90 / 110)


def test_boundary_iou_of_shifted_square_d2():
    gt = square(20, 20, 5, 14, 5, 14)
    pred = square(20, 20, 5, 14, 6, 15)
    # bands: 100 - 36 = 64 px each. Shared: rows 5,6,13,14 x cols 6..14 = 36, plus in rows
    # 7..12 the GT's band columns {5,6,13,14} meet the prediction's {6,7,14,15} at 6 and 14:
    # 12 px -> 48 shared, union 64 + 64 - 48 = 80
    assert boundary_iou(pred, gt, 2) == pytest.approx(48 / 80)


def test_band_rle_matches_band_and_handles_border_and_empty():
    rng = np.random.default_rng(0)
    for h, w, d in [(9, 13, 1), (20, 7, 2), (1, 1, 1), (30, 30, 4)]:
        for _ in range(5):
            m = rng.random((h, w)) < 0.7
            rle = band_rle(m, d, encode_mask(m))
            assert np.array_equal(mask_utils.decode(rle).astype(bool), boundary_band(m, d))
    empty = np.zeros((5, 6), dtype=bool)
    assert mask_utils.area(band_rle(empty, 1, encode_mask(empty))) == 0


# ---------------------------------------------------------------- tolerance rounding


def test_af_tolerance_is_3px_at_cityscapes_size():
    # 0.00088 x 2289.73 = 2.015 -> ceil -> 3 ("3 px at 1024x2048"); round would give 2
    assert tolerance_px(1024, 2048, 0.00088) == 3


def test_tolerances_at_davis_size():
    assert tolerance_px(480, 854, 0.00088) == 1  # 0.862 -> 1
    assert tolerance_px(480, 854, 0.008) == 8  # 7.837 -> 8


def test_tolerance_ignores_float_noise():
    # 60x80: diagonal exactly 100; 0.07 * 100 == 7.000000000000001 in floating point
    assert 0.07 * 100 > 7
    assert tolerance_px(60, 80, 0.07) == 7


def test_tolerance_of_one_or_more_is_pixels():
    assert tolerance_px(480, 854, 3) == 3


# ---------------------------------------------------------------- contours and F


def test_contour_ignores_image_border():
    m = np.zeros((10, 10), dtype=bool)
    m[:, :5] = True  # left half, touching top, bottom and left edges
    c = contour(m)
    assert c.sum() == 10 and c[:, 4].all()  # only the column facing the background
    assert not contour(np.ones((10, 10), dtype=bool)).any()


def test_contour_is_4_connected_inner_boundary():
    m = square(5, 5, 1, 3, 1, 3)
    m[1, 1] = False  # remove a corner
    c = contour(m)
    assert not c[2, 2]  # its only background neighbour (1,1) is diagonal
    assert c[1, 2] and c[2, 1]  # these touch (1,1) directly
    assert contour(square(20, 20, 5, 14, 5, 14)).sum() == 36


def test_fscore_tolerance_is_euclidean_and_inclusive():
    gt = square(20, 20, 10, 10, 10, 10)  # one pixel: its own contour
    diag = square(20, 20, 11, 11, 11, 11)  # distance sqrt(2)
    two = square(20, 20, 10, 10, 12, 12)  # distance 2
    assert contour_fscore(diag, gt, 1).f == 0.0  # sqrt(2) > 1 (Chebyshev would say 1)
    assert contour_fscore(diag, gt, 2).f == 1.0
    assert contour_fscore(two, gt, 1).f == 0.0
    assert contour_fscore(two, gt, 2).f == 1.0  # exactly at the tolerance counts


def test_fscore_of_shifted_square():
    gt = square(20, 20, 5, 14, 5, 14)
    pred = square(20, 20, 5, 14, 6, 15)
    # tol 0: only the 18 shared contour pixels (rows 5 and 14, cols 6..14) match, of 36 each
    exact = contour_fscore(pred, gt, 0)
    assert (exact.precision, exact.recall, exact.f) == pytest.approx((0.5, 0.5, 0.5))
    # tol 1: every contour pixel has one of the other contour within 1 px
    assert contour_fscore(pred, gt, 1) == (1.0, 1.0, 1.0)


def test_fscore_partial_precision():
    gt = square(30, 30, 5, 14, 5, 14)  # contour: 36 px
    pred = square(30, 30, 5, 14, 5, 24)  # 10 rows x 20 cols, contour 2*20 + 2*8 = 56 px
    # tol 1. Prediction: rows 5 and 14 at cols 5..15 (col 15 is 1 px from the GT's corner
    # column 14) = 2 x 11, plus col 5 rows 6..13 lying on the GT = 8: 30 of 56.
    # GT: everything but its right column, col 14, rows 7..12 (the prediction has no contour
    # there; rows 6 and 13 are 1 px from the prediction's rows 5 and 14): 36 - 6 = 30 of 36.
    res = contour_fscore(pred, gt, 1)
    assert res.precision == pytest.approx(30 / 56)
    assert res.recall == pytest.approx(30 / 36)
    assert res.f == pytest.approx(2 * (30 / 56) * (30 / 36) / (30 / 56 + 30 / 36))


def test_fscore_empty_cases():
    empty = np.zeros((10, 10), dtype=bool)
    blob = square(10, 10, 3, 6, 3, 6)
    assert contour_fscore(empty, empty, 1) == (1.0, 1.0, 1.0)
    assert contour_fscore(empty, blob, 1) == (0.0, 1.0, 0.0)  # nothing predicted: P=1, R=0
    assert contour_fscore(blob, empty, 1) == (0.0, 0.0, 1.0)  # nothing to find: P=0, R=1


def test_j_of_two_empty_masks_is_one():
    empty = np.zeros((4, 4), dtype=bool)
    assert iou(empty, empty, empty=1.0) == 1.0
    assert iou(empty, square(4, 4, 0, 1, 0, 1), empty=1.0) == 0.0
