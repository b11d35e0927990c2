"""Finding the image behind each ``image_id`` of a COCO results file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpr.errors import BprInputError
from bpr.io.coco import load_json
from bpr.io.images import find_image_by_stem


def load_results(
    path: str | os.PathLike, required: tuple[str, ...] = ("image_id", "segmentation"), purpose: str = "refine"
) -> list[dict[str, Any]]:
    """A COCO results file: a non-empty list of objects that all have the ``required`` keys.

    A full COCO file (a dict with an ``annotations`` list) is accepted too. Shared by
    bpr-refine and bpr-eval so that both refuse the same files with the same words.
    """
    results = load_json(path)
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        results = results["annotations"]  # a full COCO file works too
    if not isinstance(results, list):
        raise BprInputError(f"{path}: a COCO results file must be a JSON list of entries")
    if not results:
        raise BprInputError(f"{path}: the results list is empty, nothing to {purpose}")
    for i, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise BprInputError(f"{path}: results[{i}] is not an object")
        for key in required:
            if key not in entry:
                raise BprInputError(f"{path}: results[{i}] has no '{key}'")
    return results


def image_paths(
    image_ids: Sequence[Any], images_dir: str | os.PathLike, image_info: str | os.PathLike | None
) -> dict[Any, Path]:
    """Map every image_id to an existing file: via ``images`` of a COCO json, else by file stem."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise BprInputError(f"image directory not found: {images_dir}")
    if image_info is not None:
        info = load_json(image_info)
        if not isinstance(info, dict) or not isinstance(info.get("images"), list):
            raise BprInputError(f"{image_info}: expected a COCO json with an 'images' list")
        names = {}
        for img in info["images"]:
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise BprInputError(f"{image_info}: every image needs 'id' and 'file_name'")
            names[img["id"]] = img["file_name"]
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
