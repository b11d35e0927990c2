#!/usr/bin/env python
"""One nearly right DAVIS frame (the ground truth through half resolution, as davis-near) refined
by a checkpoint at the settings it recommends (``key=value`` arguments override them): IoU before
and after, right pixels removed, wrong ones added, and a picture of them (true edge green,
removed red, added blue, beside the image, 2x). An experiment (issue 21, session 19), not in the
library.

    python lab/diagnostics/near_frame_view.py bpr/models/bpr_default.pt soapbox_00075.jpg work/soapbox.jpg
    python lab/diagnostics/near_frame_view.py bpr/models/bpr_default.pt soapbox_00075.jpg work/x.jpg change_margin=0.4
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gt_rim import iou, view

from bpr.evaluate.dev_table import near_perfect
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.refiner import Refiner


def main() -> None:
    checkpoint, frame, out = sys.argv[1:4]
    overrides = {k: float(v) for k, v in (a.split("=") for a in sys.argv[4:])}
    root = Path("../shared/data/davis-dev-real")
    gt = load_json(root / "gt.json")
    info = next(i for i in gt["images"] if i["file_name"] == frame)
    h, w = info["height"], info["width"]
    anns = [a for a in gt["annotations"] if a["image_id"] == info["id"]]
    truth = np.stack([decode_segmentation(a["segmentation"], h, w) for a in anns])
    coarse = np.stack([near_perfect(m) for m in truth])
    image = read_image(root / "images" / frame)
    refined = Refiner.from_checkpoint(checkpoint, **overrides).refine(image, coarse)
    removed, added = coarse & ~refined & truth, refined & ~coarse & ~truth
    print(
        f"{frame}: IoU {iou(coarse, truth):.4f} -> {iou(refined, truth):.4f}, "
        f"right px removed {int(removed.sum())}, wrong px added {int(added.sum())}"
    )
    view(image, truth.any(0), removed.any(0), added.any(0), Path(out))


if __name__ == "__main__":
    main()
