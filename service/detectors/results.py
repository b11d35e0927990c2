"""``results`` detector: precomputed detections from a COCO results file, for datasets and demos.

An upload is matched to an image of the image-info file by its file name (the base name of
the multipart file name), else by the SHA-256 of its bytes when ``BPR_RESULTS_IMAGES_DIR``
holds the original files (hashes are computed once at startup). A matched image without
detections gets an empty list; an unmatched upload gets 404.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bpr.io.coco import load_image_records
from bpr.io.results import load_results
from service.detectors.base import Detector
from service.errors import ServiceError


class ResultsDetector(Detector):
    kind = "results"

    def __init__(
        self,
        results_file: str | os.PathLike,
        image_info: str | os.PathLike,
        images_dir: str | os.PathLike | None = None,
    ) -> None:
        self.results_file = Path(results_file)
        results = load_results(results_file)  # BprInputError with a clear message if malformed
        self.images: dict[Any, dict[str, Any]] = {}
        self.by_name: dict[str, Any] = {}
        for img in load_image_records(image_info):
            self.images[img["id"]] = img
            self.by_name.setdefault(os.path.basename(str(img["file_name"])), img["id"])
        self.detections: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for entry in results:
            self.detections[entry["image_id"]].append(entry)
        self.by_hash: dict[str, Any] = {}
        if images_dir is not None:
            for image_id, img in self.images.items():
                path = Path(images_dir) / str(img["file_name"])
                if path.is_file():
                    self.by_hash[hashlib.sha256(path.read_bytes()).hexdigest()] = image_id

    async def detect(self, data: bytes, image: np.ndarray, filename: str | None) -> list[dict[str, Any]]:
        image_id = self.by_name.get(os.path.basename(filename)) if filename else None
        if image_id is None:
            image_id = self.by_hash.get(hashlib.sha256(data).hexdigest())
        if image_id is None:
            how = (
                "file name or content hash"
                if self.by_hash
                else "file name (set BPR_RESULTS_IMAGES_DIR to match by content)"
            )
            raise ServiceError(
                404,
                "no_detections",
                f"no precomputed detections for {filename or 'this image'!r} by {how} in {self.results_file.name}",
            )
        info = self.images[image_id]
        expected = (info.get("height"), info.get("width"))
        if None not in expected and expected != image.shape[:2]:
            raise ServiceError(
                422,
                "invalid_image",
                f"the precomputed detections for {info['file_name']!r} are for a {expected[1]}x{expected[0]} image, "
                f"the upload is {image.shape[1]}x{image.shape[0]}",
            )
        return [dict(e) for e in self.detections.get(image_id, [])]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "results_file": str(self.results_file),
            "images": len(self.images),
            "detections": sum(len(v) for v in self.detections.values()),
            "match_by_hash": bool(self.by_hash),
        }
