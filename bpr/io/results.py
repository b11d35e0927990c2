"""COCO results entries <-> masks, shared by bpr-refine, the service and the evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bpr.errors import BprInputError
from bpr.io.coco import decode_segmentation, encode_mask, mask_to_bbox


def entries_to_masks(entries: Sequence[dict[str, Any]], height: int, width: int, what: str = "results") -> np.ndarray:
    """Decode the ``segmentation`` of each entry into an (N, H, W) bool array."""
    masks = np.zeros((len(entries), height, width), dtype=bool)
    for i, entry in enumerate(entries):
        label = f"{what}[{entry.get('_index', i)}]"
        if not isinstance(entry, dict) or "segmentation" not in entry:
            raise BprInputError(f"{label}: entry has no 'segmentation'")
        masks[i] = decode_segmentation(entry["segmentation"], height, width, what=label)
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
