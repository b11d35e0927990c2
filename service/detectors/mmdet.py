"""``mmdet`` detector: mmdetection in-process (PointRend, HTC, Mask R-CNN...), optional.

Needs the ``mmdet`` extra (``pip install '.[mmdet]'`` in a checkout; mmcv's compiled ops take
about 20 minutes to build against current torch); nothing else in the service imports mmdet,
so the default install and test run never need it. Only mmdetection 3.x is supported
(``DetDataSample.pred_instances``).

Inference runs on one dedicated thread: mmdet models are not safe to call concurrently, and
the event loop must stay free. Labels of a COCO-trained model (80 classes) are mapped to the
COCO category ids (1..90 with gaps) that COCO results files use; other models get label + 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bpr.errors import ModelNotAvailableError
from bpr.io.coco import encode_mask, mask_to_bbox
from service.detectors.base import Detector
from service.errors import ServiceError

log = logging.getLogger("bpr.service")

# COCO's 80 "things" in label order -> their category ids in the COCO annotation files.
COCO_CATEGORY_IDS = (
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28]
    + list(range(31, 45))
    + list(range(46, 66))
    + [67, 70]
    + list(range(72, 83))
    + list(range(84, 91))
)


class MMDetDetector(Detector):
    kind = "mmdet"

    def __init__(self, config: str | os.PathLike, checkpoint: str | os.PathLike, device: str = "cpu") -> None:
        try:
            from mmdet.apis import inference_detector, init_detector
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"BPR_DETECTOR=mmdet needs mmdetection 3.x, which is not installed ({exc}); "
                "install the 'mmdet' extra of bpr-refine: pip install '<bpr checkout>[mmdet]' (see docs/service.md)"
            ) from None
        self._infer = inference_detector
        self.config, self.checkpoint, self.device = str(config), str(checkpoint), device
        self.model = init_detector(self.config, self.checkpoint, device=device)
        meta = getattr(self.model, "dataset_meta", None) or {}
        self.classes = list(meta.get("classes", []))
        coco = len(self.classes) == 80 and self.classes[:1] == ["person"]
        self.category_ids = COCO_CATEGORY_IDS if coco else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpr-mmdet")

    async def detect(self, data: bytes, image: np.ndarray, filename: str | None) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self.detect_sync, image)
        except Exception as exc:  # the detector failing (e.g. out of memory) is not the client's fault
            log.exception("mmdet inference failed")
            raise ServiceError(
                502, "detector_failed", f"the mmdet detector failed on this image: {type(exc).__name__}: {exc}"
            ) from None

    def detect_sync(self, image: np.ndarray) -> list[dict[str, Any]]:
        """HxWx3 RGB -> instances; mmdet wants BGR arrays, as mmcv.imread gives them."""
        result = self._infer(self.model, np.ascontiguousarray(image[:, :, ::-1]))
        pred = result.pred_instances
        if "masks" not in pred:
            raise ModelNotAvailableError(f"{self.config} is not an instance segmentation model (no masks)")
        masks = _numpy(pred.masks).astype(bool)
        labels = _numpy(pred.labels).astype(int)
        scores = _numpy(pred.scores).astype(float)
        out = []
        for mask, label, score in zip(masks, labels, scores):
            entry: dict[str, Any] = {
                "segmentation": encode_mask(mask),
                "bbox": mask_to_bbox(mask),
                "category_id": int(self.category_ids[label]) if self.category_ids else int(label) + 1,
                "score": float(score),
            }
            if label < len(self.classes):
                entry["category_name"] = str(self.classes[label])
            out.append(entry)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": self.config,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "classes": len(self.classes),
        }

    async def close(self) -> None:
        self._thread.shutdown(wait=True)


def _numpy(x: Any) -> np.ndarray:
    """torch tensor (any device) or array -> numpy, without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
