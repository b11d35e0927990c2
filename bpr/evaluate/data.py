"""Ground truth and results files for bpr-eval: loaded, checked, one-line errors.

Only the structure is checked here (ids, categories, scores, boxes); segmentations are decoded
and validated image by image in :mod:`bpr.evaluate.scoring`, where the image size is known.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpr.errors import BprInputError
from bpr.io.coco import load_json
from bpr.io.results import is_number, load_results


def _examples(values: list[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


@dataclass
class GroundTruth:
    """A COCO "instances" file. ``dataset`` is the parsed json; the scoring pass replaces each
    annotation's segmentation by compressed RLE (the same mask pycocotools would derive)."""

    path: Path
    dataset: dict[str, Any]
    images: dict[Any, dict[str, Any]]
    anns_by_image: dict[Any, list[dict[str, Any]]]
    category_ids: set[Any]

    def file_name(self, image_id: Any) -> str:
        return str(self.images[image_id].get("file_name", image_id))

    def group(self, image_id: Any) -> str:
        """Sequence-like group of an image: its file stem up to the last ``_`` (DAVIS ``<seq>_<frame>``)."""
        stem = Path(self.file_name(image_id)).stem
        return stem.rsplit("_", 1)[0] if "_" in stem else stem

    def is_single_instance(self) -> bool:
        """True when every image has exactly one non-crowd annotation (DAVIS-style data)."""
        return all(sum(1 for a in self.anns_by_image.get(i, []) if not a["iscrowd"]) == 1 for i in self.images)

    @property
    def n_instances(self) -> int:
        return sum(1 for a in self.dataset["annotations"] if not a["iscrowd"])

    @property
    def n_crowd(self) -> int:
        return sum(1 for a in self.dataset["annotations"] if a["iscrowd"])


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Load and check a COCO ground-truth json (images, annotations, categories)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise BprInputError(f"{path}: ground truth must be a COCO json object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BprInputError(f"{path}: ground truth needs a '{key}' list")
    if not data["images"]:
        raise BprInputError(f"{path}: ground truth has no images, nothing to evaluate")
    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise BprInputError(f"{path}: images[{i}] needs an 'id'")
        for key in ("height", "width"):
            v = img.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise BprInputError(f"{path}: image id {img['id']!r} needs a positive integer '{key}'")
        if img["id"] in images:
            raise BprInputError(f"{path}: image id {img['id']!r} appears twice")
        images[img["id"]] = img
    category_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise BprInputError(f"{path}: categories[{i}] needs an 'id'")
        category_ids.add(cat["id"])
    anns_by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    seen_ids: set[Any] = set()
    missing_id: list[dict[str, Any]] = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise BprInputError(f"{path}: annotations[{i}] is not an object")
        for key in ("image_id", "category_id", "segmentation"):
            if key not in ann:
                raise BprInputError(f"{path}: annotations[{i}] has no '{key}'")
        if ann["image_id"] not in images:
            raise BprInputError(f"{path}: annotations[{i}] refers to image_id {ann['image_id']!r}, not in 'images'")
        if ann["category_id"] not in category_ids:
            raise BprInputError(f"{path}: annotations[{i}] has category_id {ann['category_id']!r}, not in 'categories'")
        if "area" in ann and not is_number(ann["area"]):
            raise BprInputError(f"{path}: annotations[{i}] has a non-numeric 'area'")
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        if "id" in ann:
            if ann["id"] in seen_ids:
                raise BprInputError(f"{path}: annotation id {ann['id']!r} appears twice")
            seen_ids.add(ann["id"])
        else:
            missing_id.append(ann)
        anns_by_image[ann["image_id"]].append(ann)
    next_id = max((v for v in seen_ids if isinstance(v, int)), default=0) + 1
    for ann in missing_id:  # pycocotools indexes annotations by id; hand-made files may lack them
        ann["id"] = next_id
        next_id += 1
    return GroundTruth(path, data, images, dict(anns_by_image), category_ids)


@dataclass
class ResultsFile:
    """One COCO results file. ``entries`` are copies of the user's entries: the scoring pass
    puts compressed RLE in ``segmentation`` and fills missing boxes where pycocotools needs them."""

    name: str
    path: Path
    entries: list[dict[str, Any]]
    by_image: dict[Any, list[int]] = field(default_factory=dict)

    @property
    def boxes_given(self) -> bool:
        """pycocotools' loadRes takes detection areas from the boxes when the first entry has one."""
        return "bbox" in self.entries[0]


def load_results_file(path: str | os.PathLike, gt: GroundTruth, name: str | None = None) -> ResultsFile:
    """Load and check a COCO results file against the ground truth's images and categories."""
    path = Path(path)
    data = load_results(path, required=("image_id", "category_id", "segmentation"), purpose="evaluate")
    entries: list[dict[str, Any]] = []
    by_image: dict[Any, list[int]] = defaultdict(list)
    unknown_images: list[Any] = []
    unknown_cats: list[Any] = []
    for i, raw in enumerate(data):
        entry = {k: v for k, v in raw.items() if k not in ("id", "area", "iscrowd")}  # loadRes sets these
        if "score" not in entry:
            entry["score"] = 1.0  # segmenters without confidences: all detections rank equal
        if "bbox" in entry:
            box = entry["bbox"]
            if isinstance(box, list) and not box:
                del entry["bbox"]  # an empty box means "none", as pycocotools reads it
            elif not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
                raise BprInputError(f"{path}: results[{i}] 'bbox' must be [x, y, w, h]")
        if entry["image_id"] not in gt.images:
            unknown_images.append(entry["image_id"])
        elif entry["category_id"] not in gt.category_ids:
            unknown_cats.append(entry["category_id"])
        by_image[entry["image_id"]].append(i)
        entries.append(entry)
    if unknown_images:
        distinct = list(dict.fromkeys(unknown_images))
        raise BprInputError(
            f"{path}: {len(unknown_images)} results refer to image_ids not in {gt.path.name} "
            f"({_examples(distinct)}); is this the right ground truth?"
        )
    if unknown_cats:
        distinct = list(dict.fromkeys(unknown_cats))
        raise BprInputError(
            f"{path}: {len(unknown_cats)} results have category_ids not in {gt.path.name} ({_examples(distinct)})"
        )
    return ResultsFile(name or path.stem, path, entries, dict(by_image))
