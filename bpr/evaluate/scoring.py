"""The one pass over the images: decode every mask once, compute what needs pixels.

For each image, every ground-truth mask and every detection of every results file is decoded
once. From the decoded masks come (a) each mask's boundary band, stored as RLE so that
Boundary AP can use pycocotools' vectorised RLE IoU for all pairs, (b) per ground-truth
instance the best-overlapping detection, its IoU and its boundary F-score (AF), and (c) on
single-instance data, per-image J and F of the union of the predictions. Nothing here loops
over (detection, ground truth) pairs in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from bpr.evaluate.bands import band_rle, band_width, iou
from bpr.evaluate.contours import contour_fscore, tolerance_px
from bpr.evaluate.data import GroundTruth, ResultsFile
from bpr.io.coco import decode_segmentation, encode_mask, mask_to_bbox

DEFAULT_BOUNDARY_RATIO = 0.02
DEFAULT_AF_RATIO = 0.00088
DEFAULT_F_RATIO = 0.008


@dataclass(frozen=True)
class ScoringSettings:
    """Metric parameters, each a fraction of the image diagonal (see docs/metrics.md)."""

    boundary_ratio: float = DEFAULT_BOUNDARY_RATIO  # Boundary IoU band width
    af_ratio: float = DEFAULT_AF_RATIO  # AF tolerance (BPR / SegFix)
    f_ratio: float = DEFAULT_F_RATIO  # DAVIS contour accuracy F tolerance


@dataclass
class InstanceScore:
    """A non-crowd ground-truth instance against one results file."""

    iou: float  # mask IoU with its best-overlapping detection of the same category (0 if none)
    f: float  # boundary F-score (AF tolerance) against that detection (empty mask if none)
    partner: int | None  # index of that detection in the results file's entries


@dataclass
class FileScores:
    """Everything the pass computed for one results file."""

    bands: dict[int, dict[str, Any]] = field(default_factory=dict)  # entry index -> band RLE
    instances: dict[Any, InstanceScore] = field(default_factory=dict)  # GT annotation id -> score
    image_j: dict[Any, float] = field(default_factory=dict)  # single-instance data only
    image_f: dict[Any, float] = field(default_factory=dict)
    merged_images: int = 0  # images whose several predictions were merged for J / F


@dataclass
class PassResult:
    gt_bands: dict[Any, dict[str, Any]]  # GT annotation id -> band RLE
    files: list[FileScores]
    band_widths: set[int]
    af_tolerances: set[int]
    f_tolerances: set[int]


def _decode(seg: Any, h: int, w: int, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode (validated) and return the mask with its compressed RLE, reusing valid strings."""
    mask = decode_segmentation(seg, h, w, what=what)
    if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
        return mask, {"size": [h, w], "counts": seg["counts"]}
    return mask, encode_mask(mask)


def _best_partners(
    ious: np.ndarray, det_cats: list[Any], det_scores: list[float], gt_cats: list[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Per GT column: (index into detections or -1, IoU) of the same-category detection with
    the highest IoU; ties go to the higher score, then to the earlier entry."""
    n_det, n_gt = len(det_cats), len(gt_cats)
    if n_det == 0 or n_gt == 0:
        return np.full(n_gt, -1), np.zeros(n_gt)
    same = np.asarray(det_cats, dtype=object)[:, None] == np.asarray(gt_cats, dtype=object)[None, :]
    masked = np.where(same, ious, -1.0)
    order = np.argsort(-np.asarray(det_scores, dtype=float), kind="stable")
    best_in_order = np.argmax(masked[order], axis=0)  # argmax keeps the first of equal values
    best = order[best_in_order]
    best_iou = masked[best, np.arange(n_gt)]
    best = np.where(best_iou > 0, best, -1)
    return best, np.maximum(best_iou, 0.0)


def score_images(
    gt: GroundTruth,
    files: list[ResultsFile],
    settings: ScoringSettings,
    single_instance: bool,
    progress: Callable[[], None] | None = None,
) -> PassResult:
    """Run the pass; fills ``entries[i]['segmentation']`` (RLE) and missing boxes in ``files``."""
    out = PassResult({}, [FileScores() for _ in files], set(), set(), set())
    for image_id, info in gt.images.items():
        h, w = info["height"], info["width"]
        d = band_width(h, w, settings.boundary_ratio)
        t_af = tolerance_px(h, w, settings.af_ratio)
        t_f = tolerance_px(h, w, settings.f_ratio)
        out.band_widths.add(d)
        out.af_tolerances.add(t_af)
        out.f_tolerances.add(t_f)

        anns = gt.anns_by_image.get(image_id, [])
        gt_masks = []
        for ann in anns:
            mask, rle = _decode(ann["segmentation"], h, w, f"{gt.path}: annotation id {ann['id']!r}")
            ann["segmentation"] = rle
            ann.setdefault("area", int(np.count_nonzero(mask)))
            out.gt_bands[ann["id"]] = band_rle(mask, d, rle)
            gt_masks.append(mask)
        real = [j for j, ann in enumerate(anns) if not ann["iscrowd"]]
        gt_union = np.zeros((h, w), dtype=bool)
        for j in real:
            gt_union |= gt_masks[j]

        for rf, scores in zip(files, out.files):
            idx = rf.by_image.get(image_id, [])
            masks = []
            for i in idx:
                entry = rf.entries[i]
                mask, rle = _decode(entry["segmentation"], h, w, f"{rf.path}: results[{i}]")
                entry["segmentation"] = rle
                if rf.boxes_given and "bbox" not in entry:
                    entry["bbox"] = mask_to_bbox(mask)
                scores.bands[i] = band_rle(mask, d, rle)
                masks.append(mask)

            ious = np.zeros((len(idx), len(real)))
            if idx and real:  # one vectorised RLE call for every (detection, instance) pair
                det_rles = [rf.entries[i]["segmentation"] for i in idx]
                gt_rles = [anns[j]["segmentation"] for j in real]
                ious[:] = mask_utils.iou(det_rles, gt_rles, [0] * len(real))
            best, best_iou = _best_partners(
                ious,
                [rf.entries[i]["category_id"] for i in idx],
                [rf.entries[i]["score"] for i in idx],
                [anns[j]["category_id"] for j in real],
            )
            empty = np.zeros((h, w), dtype=bool)
            for col, j in enumerate(real):
                b = int(best[col])
                pred = masks[b] if b >= 0 else empty
                f = contour_fscore(pred, gt_masks[j], t_af).f
                scores.instances[anns[j]["id"]] = InstanceScore(float(best_iou[col]), f, idx[b] if b >= 0 else None)

            if single_instance:
                union = np.zeros((h, w), dtype=bool)
                for mask in masks:
                    union |= mask
                scores.merged_images += len(masks) > 1
                scores.image_j[image_id] = iou(union, gt_union, empty=1.0)
                scores.image_f[image_id] = contour_fscore(union, gt_union, t_f).f
        if progress is not None:
            progress()
    return out
