#!/usr/bin/env python
"""Where a refiner's changes go on one dev input: pixels fixed and broken, added and removed,
removed from the coarse mask's thin parts (what an opening of radius 4 takes), in slivers of
the change (what an opening of radius 1 or 2 of the changed pixels takes), by distance to the
ground truth's edge, and per DAVIS sequence. An experiment (issue 21, session 13), not in the
library: it showed that most of what the refiners break on nearly right DAVIS masks lies within
a pixel of the true edge, and that slivers are most of what they fix on real predictions.

    python lab/diagnostics/near_changes.py [--checkpoint C] [--input davis-near] [--gate]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bpr.evaluate.dev_table import INPUTS, input_files, refine_file
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.refinement import thin_parts
from bpr.refiner import Refiner

# the default model's recommended settings, given to every checkpoint (lab runs recommend none)
SETTINGS = dict(flip_tta=False, iterations=1, fallback_iou=0.5, min_area=1024, change_margin=0.2)
DISTANCE_BINS = [0, 1.5, 2.5, 4, 8, 16, 1e9]  # px from the true edge: <=1, 2, 3-4, 4-8, 8-16, beyond


def best_match(truths: list[np.ndarray], coarse: np.ndarray) -> np.ndarray:
    return max(truths, key=lambda m: (m & coarse).sum() / max((m | coarse).sum(), 1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--input", default="davis-near", choices=INPUTS)
    p.add_argument("--gate", action="store_true", help="with the checkpoint's quality gate (default: without)")
    a = p.parse_args()
    gt_path, images, coarse_path = input_files(a.input, shared_data_root(), Path("work/dev_inputs"))
    gt = load_json(gt_path)
    info = {i["id"]: i for i in gt["images"]}
    truth: dict[int, list[dict]] = {}
    for x in gt["annotations"]:
        truth.setdefault(x["image_id"], []).append(x)
    coarse = load_json(coarse_path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "refined.json"
        refiner = Refiner.from_checkpoint(a.checkpoint, quality_gate=a.gate, **SETTINGS)
        refine_file(refiner, gt_path, images, coarse_path, out)
        refined = load_json(out)
    totals = dict.fromkeys(
        ["fixed_added", "fixed_removed", "broken_added", "broken_removed", "broken_removed_thin", "fixed_removed_thin"],
        0,
    )
    for radius in (1, 2):
        totals[f"fixed_sliver{radius}"] = totals[f"broken_sliver{radius}"] = 0
    by_distance = np.zeros(len(DISTANCE_BINS) - 1, int)
    per_sequence: dict[str, list[int]] = {}
    for c, r in zip(coarse, refined, strict=True):
        im = info[c["image_id"]]
        h, w = im["height"], im["width"]
        cm, rm = decode_segmentation(c["segmentation"], h, w), decode_segmentation(r["segmentation"], h, w)
        g = best_match([decode_segmentation(t["segmentation"], h, w) for t in truth[c["image_id"]]], cm)
        added, removed = rm & ~cm, cm & ~rm
        fixed, broken = (added & g) | (removed & ~g), (added & ~g) | (removed & g)
        thin = thin_parts(cm, 4)
        totals["fixed_added"] += int((added & g).sum())
        totals["broken_added"] += int((added & ~g).sum())
        totals["fixed_removed"] += int((removed & ~g).sum())
        totals["broken_removed"] += int((removed & g).sum())
        totals["broken_removed_thin"] += int((removed & g & thin).sum())
        totals["fixed_removed_thin"] += int((removed & ~g & thin).sum())
        change = (added | removed).astype(np.uint8)
        for radius in (1, 2):
            disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            sliver = change.astype(bool) & ~cv2.morphologyEx(change, cv2.MORPH_OPEN, disk).astype(bool)
            totals[f"fixed_sliver{radius}"] += int((fixed & sliver).sum())
            totals[f"broken_sliver{radius}"] += int((broken & sliver).sum())
        g8 = g.astype(np.uint8)
        edge = g8 - cv2.erode(g8, np.ones((3, 3), np.uint8))
        distance = cv2.distanceTransform(1 - edge, cv2.DIST_L2, 3)
        by_distance += np.histogram(distance[broken], bins=DISTANCE_BINS)[0]
        row = per_sequence.setdefault(im["file_name"].rsplit("_", 1)[0], [0, 0, 0, 0])
        row[0] += int(fixed.sum())
        row[1] += int(broken.sum())
        row[2] += int((removed & g & thin).sum())
        row[3] += 1
    print(a.input, a.checkpoint or "default", "with gate" if a.gate else "no gate", totals)
    print("broken px by distance to the true edge [<=1, 2, 3-4, 4-8, 8-16, >16]:", by_distance.tolist())
    print("per sequence [fixed, broken, broken in thin parts removed, units]:", per_sequence)


if __name__ == "__main__":
    main()
