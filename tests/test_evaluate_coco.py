"""Mask AP and Boundary AP on real sets against pycocotools and a slow reference.

Mask AP must be exactly what pycocotools' COCOeval prints. Boundary AP must equal a
deliberately naive reimplementation (sliding-window erosion in numpy, one Python IoU per
pair, no OpenCV, no RLE bands) run through the same COCOeval matching.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bpr.evaluate import evaluate
from bpr.evaluate.coco_eval import STAT_NAMES
from bpr.io.coco import decode_segmentation, encode_mask, mask_to_bbox
from bpr.io.datasets import shared_data_root

DATA = shared_data_root()
DAVIS = DATA / "davis-dev-real"
COCO_MINI = DATA / "coco-mini"
pytestmark = pytest.mark.skipif(not (DAVIS / "gt.json").is_file(), reason=f"shared data not found at {DATA}")

CROWD_IMAGES = [255165, 92660, 34417]  # coco-mini images with iscrowd regions


def pycocotools_stats(gt_path: Path, results: Path | list, band_ratio: float | None = None) -> np.ndarray:
    """COCOeval stats, run the plain documented way (or with the naive boundary IoU)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(results) if isinstance(results, Path) else results)
        ev = COCOeval(gt, dt, "segm") if band_ratio is None else NaiveBoundaryEval(gt, dt, band_ratio)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def as_list(stats: dict) -> list[float]:
    return [-1.0 if stats[k] is None else stats[k] for k in STAT_NAMES]


def naive_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Band by its definition: mask pixels with a background pixel (outside = background)
    within Chebyshev distance d, i.e. not surviving a (2d+1)^2 all-ones window."""
    padded = np.pad(mask, d, constant_values=False)
    rows = sliding_window_view(padded, 2 * d + 1, axis=1).all(axis=-1)
    eroded = sliding_window_view(rows, 2 * d + 1, axis=0).all(axis=-1)
    return mask & ~eroded


class NaiveBoundaryEval(COCOeval):
    """COCOeval with min(mask IoU, boundary IoU) computed pair by pair in Python."""

    def __init__(self, gt: COCO, dt: COCO, ratio: float) -> None:
        super().__init__(gt, dt, "segm")
        self.ratio = ratio
        self.cache: dict = {}

    def _masks(self, ann: dict, kind: str, d: int) -> tuple[np.ndarray, np.ndarray]:
        key = (kind, ann["id"])
        if key not in self.cache:
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            self.cache[key] = (m, naive_band(m, d))
        return self.cache[key]

    def computeIoU(self, imgId, catId):  # noqa: N802
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: self.params.maxDets[-1]]
        img = self.cocoGt.imgs[imgId]
        d = max(1, round(self.ratio * math.hypot(img["height"], img["width"])))
        out = np.zeros((len(dts), len(gts)))
        for i, dt in enumerate(dts):
            md, bd = self._masks(dt, "dt", d)
            for j, gt in enumerate(gts):
                mg, bg = self._masks(gt, "gt", d)
                inter = np.count_nonzero(md & mg)
                if gt["iscrowd"]:
                    area = np.count_nonzero(md)
                    out[i, j] = inter / area if area else 0.0
                    continue
                union = np.count_nonzero(md | mg)
                mask_iou = inter / union if union else 0.0
                b_union = np.count_nonzero(bd | bg)
                band_iou = np.count_nonzero(bd & bg) / b_union if b_union else 0.0
                out[i, j] = min(mask_iou, band_iou)
        return out


def fake_results(gt_path: Path, seed: int, duplicates: bool = True) -> list[dict]:
    """Detections made from the ground truth: each non-crowd mask dilated or eroded by 1-3 px
    (small ones can vanish), plus a lower-scored copy shifted by a few pixels."""
    rng = np.random.default_rng(seed)
    gt = json.loads(gt_path.read_text())
    images = {img["id"]: img for img in gt["images"]}
    out = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        img = images[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], img["height"], img["width"]).astype(np.uint8)
        k = int(rng.integers(1, 4))
        kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
        mask = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(mask, kernel).astype(bool)
        variants = [(mask, float(0.5 + rng.random() / 2))]
        if duplicates:
            shifted = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
            variants.append((shifted, float(rng.random() / 2)))
        for m, score in variants:
            out.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "segmentation": encode_mask(m),
                    "bbox": mask_to_bbox(m),
                    "score": score,
                }
            )
    return out


def subset_gt(tmp_path: Path, image_ids: list[int]) -> Path:
    gt = json.loads((COCO_MINI / "gt.json").read_text())
    keep = set(image_ids)
    gt["images"] = [img for img in gt["images"] if img["id"] in keep]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    path = tmp_path / "gt_subset.json"
    path.write_text(json.dumps(gt))
    return path


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------- mask AP == pycocotools


def test_mask_ap_equals_cocoeval_on_davis_osvos():
    ev = evaluate(DAVIS / "gt.json", [DAVIS / "osvos.json"])
    reference = pycocotools_stats(DAVIS / "gt.json", DAVIS / "osvos.json")
    assert as_list(ev.summaries[0].mask_ap) == list(reference)  # exact, all 12 numbers
    assert ev.single_instance


def test_mask_ap_without_boxes_uses_mask_areas_like_pycocotools(tmp_path):
    entries = json.loads((DAVIS / "osvos.json").read_text())
    for e in entries:
        del e["bbox"]
    path = write(tmp_path / "osvos_nobox.json", entries)
    ev = evaluate(DAVIS / "gt.json", [path])
    assert as_list(ev.summaries[0].mask_ap) == list(pycocotools_stats(DAVIS / "gt.json", path))


def test_mask_ap_equals_cocoeval_on_coco_mini_with_polygons_and_crowds(tmp_path):
    path = write(tmp_path / "fake.json", fake_results(COCO_MINI / "gt.json", seed=1))
    ev = evaluate(COCO_MINI / "gt.json", [path])
    assert as_list(ev.summaries[0].mask_ap) == list(pycocotools_stats(COCO_MINI / "gt.json", path))
    assert not ev.single_instance
    assert ev.summaries[0].single is None


# ---------------------------------------------------------------- boundary AP


def test_boundary_ap_at_most_mask_ap_on_davis():
    ev = evaluate(DAVIS / "gt.json", [DAVIS / "osvos.json", DAVIS / "rvos.json"])
    for s in ev.summaries:
        for key in ("AP", "AP50", "AP75"):
            assert s.boundary_ap[key] <= s.mask_ap[key]
        assert s.boundary_ap["AP"] < s.mask_ap["AP"]  # real predictions have imperfect boundaries


def test_boundary_ap_equals_naive_reference(tmp_path):
    gt_path = subset_gt(tmp_path, CROWD_IMAGES + [139, 802, 11813])
    path = write(tmp_path / "fake.json", fake_results(gt_path, seed=2))
    ev = evaluate(gt_path, [path])
    reference = pycocotools_stats(gt_path, path, band_ratio=0.02)
    assert as_list(ev.summaries[0].boundary_ap) == list(reference)
    assert ev.summaries[0].boundary_ap["AP"] < ev.summaries[0].mask_ap["AP"]
    # a different ratio changes the bands, and still matches
    ev = evaluate(gt_path, [path], settings=type(ev.settings)(boundary_ratio=0.005))
    assert as_list(ev.summaries[0].boundary_ap) == list(pycocotools_stats(gt_path, path, band_ratio=0.005))


def test_crowd_regions_absorb_detections_in_boundary_ap_too(tmp_path):
    """Perfect detections + one confident blob deep inside each crowd region: COCO ignores the
    blob (it falls in a crowd), so mask AP and Boundary AP are both exactly 1. Were the band
    IoU used for crowds, the blob would have ~0 band overlap and count as a false positive."""
    gt = json.loads((COCO_MINI / "gt.json").read_text())
    images = {img["id"]: img for img in gt["images"]}
    results = []
    blobs = 0
    for ann in gt["annotations"]:
        img = images[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], img["height"], img["width"])
        if not ann["iscrowd"]:
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "segmentation": encode_mask(mask),
                    "bbox": mask_to_bbox(mask),
                    "score": 0.9,
                }
            )
            continue
        depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        if depth[y, x] < 8:
            continue  # too thin to hold a blob well inside
        blob = np.zeros_like(mask)
        blob[y - 2 : y + 3, x - 2 : x + 3] = True
        assert (blob & mask).sum() == blob.sum()
        blobs += 1
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": encode_mask(blob),
                "bbox": mask_to_bbox(blob),
                "score": 1.0,
            }
        )
    assert blobs >= 2
    path = write(tmp_path / "perfect_plus_blobs.json", results)
    ev = evaluate(COCO_MINI / "gt.json", [path])
    s = ev.summaries[0]
    assert s.mask_ap["AP"] == 1.0
    assert s.boundary_ap["AP"] == 1.0
    assert s.af == 1.0 and s.instance_miou == 1.0
    assert list(pycocotools_stats(COCO_MINI / "gt.json", path))[0] == 1.0
