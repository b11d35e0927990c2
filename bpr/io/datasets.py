"""Finding the image behind each ``image_id`` of a COCO results file, and where bpr's shared
data sets live."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpr.errors import BprInputError
from bpr.io.coco import load_image_records
from bpr.io.images import find_image_by_stem

SHARED_DATA_ENV = "BPR_SHARED_DATA"


def shared_data_root() -> Path:
    """The folder of the shared data sets (``cityscapes-dev``, ``davis-dev-real``, ``davis-train``,
    ...) that the dev table, the scripts and the tests read, as an absolute path:
    ``BPR_SHARED_DATA``, else ``../shared/data``, either relative to the current directory (the
    checkout's sibling for commands run from the checkout, as ``scripts/train_effl0.sh`` has it)."""
    return Path(os.environ.get(SHARED_DATA_ENV, "").strip() or "../shared/data").resolve()


def image_paths(
    image_ids: Sequence[Any], images_dir: str | os.PathLike, image_info: str | os.PathLike | None
) -> dict[Any, Path]:
    """Map every image_id to an existing file: via ``images`` of a COCO json, else by file stem."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise BprInputError(f"image directory not found: {images_dir}")
    if image_info is not None:
        names = {img["id"]: img["file_name"] for img in load_image_records(image_info)}
    paths: dict[Any, Path] = {}
    for image_id in dict.fromkeys(image_ids):
        if image_info is not None:
            if image_id not in names:
                raise BprInputError(f"image_id {image_id!r} is not in {image_info}")
            path = images_dir / names[image_id]
            if not path.is_file():
                raise BprInputError(f"image file not found for image_id {image_id!r}: {path}")
        else:
            found = find_image_by_stem(images_dir, str(image_id))
            if found is None:
                raise BprInputError(
                    f"no image named {image_id!r} (any suffix) in {images_dir}; pass --image-info "
                    "with a COCO json whose 'images' map image_id to file_name"
                )
            path = found
        paths[image_id] = path
    return paths
