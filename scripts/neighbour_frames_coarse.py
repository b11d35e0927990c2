#!/usr/bin/env python
"""Real-looking coarse masks for a video dataset: each frame's ground truth taken from its
neighbouring annotated frames, shifted so the centroids line up, written as a COCO results
file for ``bpr-build-patches --coarse``.

    python scripts/neighbour_frames_coarse.py ../shared/data/davis-train/gt.json work/davis-neighbours.json

Why: a video segmenter's errors are mostly the object's previous shape laid over its new pose
(limbs and wheels a few to tens of pixels off, parts that appeared or vanished). A neighbour
frame's exact mask, aligned on the centroid as a tracker would, is such an error with real
object shapes and real motion, which no synthetic recipe reproduces. bpr-build-patches keeps
only the ones that still overlap the ground truth at IoU > 0.5.

Frames are grouped by sequence from file names ``<sequence>_<frame>.<ext>`` (the davis sets);
one instance per frame is expected (the whole foreground), as in DAVIS 2016.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bpr.errors import BprInputError
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic

FRAME_NAME = re.compile(r"^(?P<seq>.+)_(?P<frame>\d+)\.[^.]+$")


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The mask moved by (dy, dx) pixels; what leaves the image is dropped."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def neighbour_results(dataset: dict, reach: int) -> list[dict]:
    """Results entries: for every frame, the aligned masks of up to ``reach`` annotated frames
    on each side of it in its sequence."""
    images = {im["id"]: im for im in dataset["images"]}
    masks: dict[int, np.ndarray] = {}
    category: dict[int, int] = {}
    for ann in dataset["annotations"]:
        category.setdefault(ann["image_id"], ann["category_id"])
        im = images[ann["image_id"]]
        m = decode_segmentation(ann["segmentation"], im["height"], im["width"])
        masks[ann["image_id"]] = masks[ann["image_id"]] | m if ann["image_id"] in masks else m
    sequences: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for image_id in masks:
        match = FRAME_NAME.match(Path(images[image_id]["file_name"]).name)
        if match is None:
            raise BprInputError(f"{images[image_id]['file_name']}: expected <sequence>_<frame>.<ext> file names")
        sequences[match["seq"]].append((int(match["frame"]), image_id))
    entries = []
    for frames in sequences.values():
        order = [image_id for _, image_id in sorted(frames)]
        for i, image_id in enumerate(order):
            target = masks[image_id]
            if not target.any():
                continue
            for j in range(max(0, i - reach), min(len(order), i + reach + 1)):
                source = masks[order[j]]
                if j == i or not source.any() or source.shape != target.shape:
                    continue
                dy, dx = np.round(_centroid(target) - _centroid(source)).astype(int)
                coarse = _shift(source, int(dy), int(dx))
                entries.append(
                    {
                        "image_id": image_id,
                        "category_id": category[image_id],
                        "segmentation": encode_mask(coarse),
                        "bbox": mask_to_bbox(coarse),
                        "score": 1.0,
                    }
                )
    return entries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gt", type=Path, help="COCO instances json of a video dataset (davis-train)")
    p.add_argument("out", type=Path, help="COCO results json to write")
    p.add_argument("--reach", type=int, default=1, help="annotated frames taken on each side (default 1)")
    args = p.parse_args(argv)
    try:
        if args.reach < 1:
            raise BprInputError(f"--reach must be at least 1, got {args.reach}")
        entries = neighbour_results(load_json(args.gt), args.reach)
    except BprInputError as exc:
        print(f"neighbour_frames_coarse: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, entries)
    print(f"{len(entries)} coarse masks -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
