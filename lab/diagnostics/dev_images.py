"""What the diagnostics share: a few real images of a dev input, and the patches the refiner
cuts from them, through the library's own door (so a diagnostic measures the patches that
``bpr-refine`` runs, minimum area and all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bpr.evaluate.dev_table import CACHE, input_files
from bpr.io.coco import load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks, group_by_image
from bpr.refiner import Job, Refiner

Example = tuple[dict[str, Any], np.ndarray, np.ndarray]  # (image info, image, coarse masks)


def spread_images(name: str, count: int, data: Path | None = None, cache: Path = CACHE) -> list[Example]:
    """``count`` images of dev input ``name`` as (image info, image, coarse masks): every k-th
    image in the order the coarse file lists them, so DAVIS frames span all sequences.
    ``data`` defaults to the shared data sets (``BPR_SHARED_DATA``, else ``../shared/data``)."""
    gt_path, images, coarse_path = input_files(name, data or shared_data_root(), cache)
    info = {i["id"]: i for i in load_json(gt_path)["images"]}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for entry in load_json(coarse_path):
        groups.setdefault(entry["image_id"], []).append(entry)
    keys = list(groups)[:: max(1, len(groups) // count)][:count]
    return [
        (
            info[k],
            read_image(images / info[k]["file_name"]),
            entries_to_masks(groups[k], info[k]["height"], info[k]["width"]),
        )
        for k in keys
    ]


def street_scenes_maskrcnn28(
    data: Path | None = None,
) -> tuple[dict[str, Any], dict[Any, list[dict[str, Any]]], list[dict[str, Any]], dict[Any, list[int]]]:
    """cityscapes-dev with its Mask R-CNN-like coarse masks, whole: (the ground truth as read,
    its annotations by image id, the coarse entries, the entries' positions by image id in file order)."""
    root = (data or shared_data_root()) / "cityscapes-dev"
    gt = load_json(root / "gt.json")
    truths: dict[Any, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        truths.setdefault(ann["image_id"], []).append(ann)
    entries = load_json(root / "maskrcnn28.json")
    return gt, truths, entries, group_by_image(entries)


def first_pass(refiner: Refiner, image: np.ndarray, masks: np.ndarray) -> Job | None:
    """The first pass's patches of one image, as the refiner's options cut them (None: no boundary to patch)."""
    return refiner.start_numpy(image, masks).advance()
