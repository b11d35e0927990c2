"""What the diagnostics share: a few real images of a dev input, and the patches the refiner
cuts from them, through the library's own door (so a diagnostic measures the patches that
``bpr-refine`` runs, minimum area and all)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dev_table import CACHE, DATA, input_files  # noqa: E402

from bpr.io.coco import load_json  # noqa: E402
from bpr.io.images import read_image  # noqa: E402
from bpr.io.results import entries_to_masks  # noqa: E402
from bpr.refiner import Job, Refiner  # noqa: E402

Example = tuple[dict[str, Any], np.ndarray, np.ndarray]  # (image info, image, coarse masks)


def spread_images(name: str, count: int, data: Path = DATA, cache: Path = CACHE) -> list[Example]:
    """``count`` images of dev input ``name`` as (image info, image, coarse masks): every k-th
    image in the order the coarse file lists them, so DAVIS frames span all sequences."""
    gt_path, images, coarse_path = input_files(name, data, cache)
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


def first_pass(refiner: Refiner, image: np.ndarray, masks: np.ndarray) -> Job | None:
    """The first pass's patches of one image, as the refiner's options cut them (None: no boundary to patch)."""
    return refiner.start_numpy(image, masks).advance()
