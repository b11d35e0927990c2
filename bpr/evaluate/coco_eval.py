"""Mask AP (pycocotools' COCOeval, untouched) and Boundary AP (COCOeval, IoU replaced).

Boundary AP is COCO AP with each (detection, ground truth) IoU replaced by
min(mask IoU, boundary IoU) (Cheng et al., CVPR 2021). Only ``computeIoU`` is overridden;
matching, crowd handling, area ranges and the summary stay pycocotools' own, so Boundary AP
and mask AP differ in nothing but that IoU. For crowd ground truth the IoU stays pycocotools'
crowd IoU of the masks (intersection over the detection's area): a crowd region's outline is
not an object boundary, and its job is only to absorb detections that fall inside it. The
reference Boundary IoU API does the same.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_INDEX_KEY = "_bpr_index"  # carried through loadRes so each detection finds its band


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints progress on stdout; bpr-eval's stdout is the report."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build_gt(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over an already-loaded ground-truth dict."""
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def load_detections(gt: COCO, entries: list[dict[str, Any]]) -> COCO:
    """``gt.loadRes`` on copies of the entries (loadRes writes id/area/iscrowd into them).

    Detection areas (used for the small/medium/large ranges) follow loadRes: box area when the
    first entry has a bbox, mask area otherwise.
    """
    copies = [{**entry, _INDEX_KEY: i} for i, entry in enumerate(entries)]
    with _quiet():
        return gt.loadRes(copies)


def _stats(evaluator: COCOeval) -> dict[str, float | None]:
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if v < 0 else float(v)) for name, v in zip(STAT_NAMES, evaluator.stats)}


def mask_ap(gt: COCO, dt: COCO) -> dict[str, float | None]:
    """COCOeval(iouType='segm') stats by name; None where COCOeval reports -1 (no GT in range)."""
    return _stats(COCOeval(gt, dt, iouType="segm"))


class BoundaryCOCOeval(COCOeval):
    """COCOeval whose IoU is min(mask IoU, boundary IoU) for non-crowd ground truth.

    ``gt_bands`` maps GT annotation id -> band RLE, ``dt_bands`` maps the detection's index in
    the results entries -> band RLE; both are computed once per mask by the scoring pass.
    """

    def __init__(self, gt: COCO, dt: COCO, gt_bands: dict[Any, dict], dt_bands: dict[int, dict]) -> None:
        super().__init__(gt, dt, iouType="segm")
        self._gt_bands = gt_bands
        self._dt_bands = dt_bands

    def computeIoU(self, imgId: Any, catId: Any) -> np.ndarray | list:  # noqa: N802 (pycocotools' name)
        p = self.params
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        if not gts or not dts:
            return []  # what COCOeval's own computeIoU yields (maskUtils.iou of an empty list)
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")  # COCOeval's order
        dts = [dts[i] for i in order][: p.maxDets[-1]]
        crowd = np.array([int(g["iscrowd"]) for g in gts])
        ious = np.asarray(
            mask_utils.iou([d["segmentation"] for d in dts], [g["segmentation"] for g in gts], crowd.tolist()),
            dtype=float,
        )
        plain = crowd == 0
        if plain.any():
            band_ious = np.asarray(
                mask_utils.iou(
                    [self._dt_bands[d[_INDEX_KEY]] for d in dts],
                    [self._gt_bands[g["id"]] for g, keep in zip(gts, plain) if keep],
                    [0] * int(plain.sum()),
                ),
                dtype=float,
            ).reshape(len(dts), int(plain.sum()))
            ious[:, plain] = np.minimum(ious[:, plain], band_ious)
        return ious


def boundary_ap(gt: COCO, dt: COCO, gt_bands: dict[Any, dict], dt_bands: dict[int, dict]) -> dict[str, float | None]:
    """Boundary AP stats by name (same layout as :func:`mask_ap`)."""
    return _stats(BoundaryCOCOeval(gt, dt, gt_bands, dt_bands))
