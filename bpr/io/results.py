"""COCO results files and entries <-> masks, shared by bpr-refine, the service and the evaluator."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bpr.errors import BprInputError
from bpr.io.coco import decode_into, encode_mask, load_json, mask_to_bbox
from bpr.io.images import read_image_any
from bpr.io.limits import default_max_mask_pixels, over_mask_limit


def load_results(
    path: str | os.PathLike, required: tuple[str, ...] = ("image_id", "segmentation"), purpose: str = "refine"
) -> list[dict[str, Any]]:
    """A COCO results file: a non-empty list of objects that all have the ``required`` keys.

    A full COCO file (a dict with an ``annotations`` list) is accepted too. The one results
    loader: bpr-refine, bpr-eval and the service's results detector refuse the same files
    with the same words.
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
        problem = entry_field_problem(entry)
        if problem:
            raise BprInputError(f"{path}: results[{i}] {problem}")
    return results


def is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def entry_field_problem(entry: dict[str, Any]) -> str | None:
    """What is wrong with a results entry's ids and score, or None: the rule every door applies.

    ``image_id`` an int or a string; ``category_id`` an int; ``id`` an int or a string; ``score``
    a finite number. Each may be absent (except where a door requires it), none may be null:
    bpr-eval ranks by the score, so a refined file must keep it a number.
    """
    for key, kinds, words in (
        ("image_id", (int, str), "an int or a string"),
        ("category_id", (int,), "an int"),
        ("id", (int, str), "an int or a string"),
    ):
        if key in entry and (not isinstance(entry[key], kinds) or isinstance(entry[key], bool)):
            return f"'{key}' must be {words}, got {entry[key]!r:.40}"
    if "score" in entry and not is_number(entry["score"]):
        return f"'score' must be a finite number, got {entry['score']!r:.40}"
    return None


def entries_to_masks(entries: Sequence[dict[str, Any]], height: int, width: int, what: str = "results") -> np.ndarray:
    """Decode the ``segmentation`` of each entry into an (N, H, W) bool array."""
    masks = np.zeros((len(entries), height, width), dtype=bool)
    for i, entry in enumerate(entries):
        label = f"{what}[{entry.get('_index', i)}]"
        if not isinstance(entry, dict) or "segmentation" not in entry:
            raise BprInputError(f"{label}: entry has no 'segmentation'")
        decode_into(entry["segmentation"], masks[i], what=label)
    return masks


def refined_entry(entry: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """The entry with its mask replaced: RLE (str counts), recomputed bbox and area.

    Every other key (score, category_id, ids, the caller's own fields) is carried through.
    """
    out = {k: v for k, v in entry.items() if k != "_index"}
    out["segmentation"] = encode_mask(mask)
    out["bbox"] = mask_to_bbox(mask)
    out["area"] = int(mask.sum())
    return out


def load_image_masks(
    path: str, entries: Sequence[dict[str, Any]], indices: Sequence[int], max_mask_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image and the masks of its entries (``indices``: their positions in the results
    file, which error messages name): the step both engines run per image.

    ``max_mask_pixels`` (default ``BPR_MAX_MASK_PIXELS``) bounds entries x height x width,
    checked before the masks are allocated: a results file with thousands of entries for one
    image is a one-line error, not a numpy allocation failure minutes into the run."""
    image = read_image_any(path)
    limit = default_max_mask_pixels() if max_mask_pixels is None else max_mask_pixels
    h, w = image.shape[:2]
    if len(entries) * h * w > limit:
        raise BprInputError(over_mask_limit(f"results for {path}", len(entries), w, h, limit))
    labelled = [{**e, "_index": i} for e, i in zip(entries, indices)]
    return image, entries_to_masks(labelled, image.shape[0], image.shape[1], what="results")


def check_mask_budget(
    results: Sequence[dict[str, Any]], groups: dict[Any, list[int]], max_mask_pixels: int | None = None
) -> None:
    """Refuse, before any image is read, an image whose entries alone exceed the mask limit.

    The image size is taken from the first RLE among its entries (polygons carry none; those
    images are checked by :func:`load_image_masks` once read). Cheap: one look per image."""
    limit = default_max_mask_pixels() if max_mask_pixels is None else max_mask_pixels
    for image_id, indices in groups.items():
        for i in indices:
            size = results[i]["segmentation"].get("size") if isinstance(results[i]["segmentation"], dict) else None
            if isinstance(size, list) and len(size) == 2 and all(is_number(v) and v > 0 for v in size):
                h, w = int(size[0]), int(size[1])
                if len(indices) * h * w > limit:
                    what = f"results for image_id {image_id!r}"
                    raise BprInputError(over_mask_limit(what, len(indices), w, h, limit))
                break


def group_by_image(results: Sequence[dict[str, Any]]) -> dict[Any, list[int]]:
    """Entry positions per image_id, images in the order their first entry appears."""
    groups: dict[Any, list[int]] = {}
    for i, entry in enumerate(results):
        groups.setdefault(entry["image_id"], []).append(i)
    return groups
