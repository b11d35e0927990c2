#!/usr/bin/env python
"""Does the default cut masks straight along patch borders where it harms, and not where it helps?
For a few davis-dev-real frames (nearly right, OSVOS and RVOS inputs, by image index): IoU before
and after the default model at its settings, the boundary refinement made, and how much of it runs
along a patch's border inside the input mask (a change stopped by the patch's edge). An experiment
(issue 21, session 19), not in the library:

    python lab/diagnostics/patch_border_cuts.py
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from gt_rim import iou

from bpr.evaluate.dev_table import near_perfect
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.refiner import Refiner

ROOT = shared_data_root() / "davis-dev-real"
FRAMES = {"near": [85, 84, 58, 40], "osvos": [88, 44, 46, 66], "rvos": [34, 30, 6, 26]}


def frame(gt: dict, predictions: list[dict], index: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, input masks (nearly right, or the predictor's ``predictions``) and ground truth of one frame."""
    info = gt["images"][index]
    h, w = info["height"], info["width"]
    truth = np.stack(
        [decode_segmentation(a["segmentation"], h, w) for a in gt["annotations"] if a["image_id"] == info["id"]]
    )
    if kind == "near":
        coarse = np.stack([near_perfect(m) for m in truth])
    else:
        entries = [x for x in predictions if x["image_id"] == info["id"]]
        coarse = np.stack([decode_segmentation(x["segmentation"], h, w) for x in entries])
    return read_image(ROOT / "images" / info["file_name"]), coarse, truth


def edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def main() -> None:
    gt = load_json(ROOT / "gt.json")
    refiner = Refiner.from_checkpoint(None)
    for kind, indices in FRAMES.items():
        predictions = [] if kind == "near" else load_json(ROOT / f"{kind}.json")  # read once per predictor
        for index in indices:
            image, coarse, truth = frame(gt, predictions, index, kind)
            job = refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(coarse), refiner.options)
            refined = refiner.refine(image, coarse)
            h, w = coarse.shape[1:]
            border = np.zeros((h, w), bool)
            last = refiner.patch_size - 1
            for y0, x0 in job.corners.astype(int):
                y1, x1 = min(y0 + last, h - 1), min(x0 + last, w - 1)
                border[[y0, y1], x0 : x1 + 1] = True
                border[y0 : y1 + 1, [x0, x1]] = True
            made = edges(refined[0]) & ~edges(coarse[0])
            inside = cv2.erode(coarse[0].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            print(
                f"{kind} {index}: IoU {iou(coarse, truth):.3f} -> {iou(refined, truth):.3f}, boundary made "
                f"{int(made.sum())} px, along patch borders inside the input {int((made & border & inside).sum())}"
            )


if __name__ == "__main__":
    main()
