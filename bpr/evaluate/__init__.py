"""Evaluation of instance masks: mask AP, Boundary AP, AF, and DAVIS J / F (see docs/metrics.md).

The pixel-level definitions live in :mod:`bpr.evaluate.bands` (Boundary IoU) and
:mod:`bpr.evaluate.contours` (boundary F-measure); :mod:`bpr.evaluate.evaluator` runs a whole
dataset; :mod:`bpr.evaluate.report` and :mod:`bpr.evaluate.plots` present the result.
"""

from bpr.evaluate.bands import band_width, boundary_band, boundary_iou
from bpr.evaluate.contours import contour, contour_fscore, tolerance_px
from bpr.evaluate.evaluator import Evaluation, evaluate
from bpr.evaluate.scoring import ScoringSettings

__all__ = [
    "Evaluation",
    "ScoringSettings",
    "band_width",
    "boundary_band",
    "boundary_iou",
    "contour",
    "contour_fscore",
    "evaluate",
    "tolerance_px",
]
