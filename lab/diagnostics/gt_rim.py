#!/usr/bin/env python
"""Does a refiner move masks that are exactly right? The ground truth itself (``gt``) or the
ground truth through half resolution (``near``) goes in, without the gate, at the default's
other settings; out come the right pixels it removed, the wrong ones it added, and the frames
worse by more than 1 IoU point. ``--view FILE`` draws one frame: the true edge green, removed
pixels red, added blue, beside the image (2x). An experiment (issue 21, session 13), not in the
library.

    python lab/diagnostics/gt_rim.py lab/runs/hr18s_default/model.pt ../shared/data/davis-dev-real gt --every 3
    python lab/diagnostics/gt_rim.py <checkpoint> ../shared/data/davis-dev-real gt --frame motocross-jump_00010.jpg \\
        --view lab/runs/s13_motocross_gt_rim.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from bpr.evaluate.dev_table import near_perfect
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.refiner import Refiner

SETTINGS = dict(flip_tta=False, iterations=1, fallback_iou=0.5, min_area=1024, change_margin=0.2)


def iou(masks: np.ndarray, truth: np.ndarray) -> float:
    return float((masks & truth).sum() / max((masks | truth).sum(), 1))


def view(image: np.ndarray, truth: np.ndarray, removed: np.ndarray, added: np.ndarray, path: Path) -> None:
    drawn = image.copy()
    t = truth.astype(np.uint8)
    drawn[(t - cv2.erode(t, np.ones((3, 3), np.uint8))).astype(bool)] = (0, 255, 0)
    drawn[removed], drawn[added] = (255, 0, 0), (0, 0, 255)
    ys, xs = np.nonzero(removed | added | truth)
    y0, y1, x0, x1 = max(0, ys.min() - 20), ys.max() + 20, max(0, xs.min() - 20), xs.max() + 20
    pair = [cv2.resize(x[y0:y1, x0:x1], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST) for x in (image, drawn)]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(pair, 1), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("root", type=Path, help="a shared data set (gt.json, images/)")
    p.add_argument("kind", choices=["gt", "near"])
    p.add_argument("--every", type=int, default=1, help="every Nth image")
    p.add_argument("--frame", help="only this image (file name)")
    p.add_argument("--view", type=Path, help="with --frame: draw it here")
    a = p.parse_args()
    gt = load_json(a.root / "gt.json")
    anns: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    images = [i for i in gt["images"] if a.frame in (None, i["file_name"])][:: a.every]
    refiner = Refiner.from_checkpoint(a.checkpoint, quality_gate=False, **SETTINGS)
    removed_right = added_wrong = area = worse = 0
    for info in images:
        h, w = info["height"], info["width"]
        truth = np.stack([decode_segmentation(x["segmentation"], h, w) for x in anns[info["id"]]])
        coarse = np.stack([near_perfect(m) for m in truth]) if a.kind == "near" else truth.copy()
        image = read_image(a.root / "images" / info["file_name"])
        refined = refiner.refine(image, coarse)
        removed, added = coarse & ~refined & truth, refined & ~coarse & ~truth
        removed_right += int(removed.sum())
        added_wrong += int(added.sum())
        area += int(truth.sum())
        worse += int(iou(refined, truth) < iou(coarse, truth) - 0.01)
        if a.view is not None and a.frame is not None:
            view(image, truth.any(0), removed.any(0), added.any(0), a.view)
    print(
        f"{a.checkpoint} {a.root.name} {a.kind}: {len(images)} images, right px removed {removed_right}, "
        f"wrong px added {added_wrong}, per 10k object px {1e4 * (removed_right + added_wrong) / max(area, 1):.1f}, "
        f"worse by >1 IoU point {worse}"
    )


if __name__ == "__main__":
    main()
