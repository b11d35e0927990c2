#!/usr/bin/env python
"""Street scenes the dev table does not hold: the held-out images of cityscapes-train (no refiner
trained on them; the same hash split as bpr-build-patches), each instance given a Mask R-CNN-like
coarse mask by the training recipe ``grid_resample`` (a jittered box, a 12-40 cell grid: rougher
and more varied than cityscapes-dev's maskrcnn28), refined by each checkpoint at its own settings.
Session 14: does ``ungated_shift`` hold up beyond the dev inputs it was chosen on?

    python lab/diagnostics/cs_heldout_probe.py 0.05 work/s14/default_prev.pt bpr/models/bpr_default.pt
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from bpr.evaluate.dev_table import refine_file, score
from bpr.io.coco import decode_segmentation, load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.results import refined_entry
from bpr.refiner import Refiner
from bpr.train.build_patches import is_held_out
from bpr.train.synth import grid_resample


def main() -> None:
    fraction, checkpoints = float(sys.argv[1]), sys.argv[2:]
    root = shared_data_root() / "cityscapes-train"
    gt = load_json(root / "gt.json")
    images = [i for i in gt["images"] if is_held_out(i["file_name"], fraction)]
    keep = {i["id"]: i for i in images}
    annotations = [a for a in gt["annotations"] if a["image_id"] in keep and not a.get("iscrowd")]
    rng = np.random.default_rng(0)
    coarse = []
    for a in annotations:
        info = keep[a["image_id"]]
        truth = decode_segmentation(a["segmentation"], info["height"], info["width"])
        if not truth.any():
            continue
        m = grid_resample(np.zeros(0), truth, rng)
        if m.any():
            confidence = float(0.9 + 0.01 * rng.random())
            coarse.append(
                refined_entry({"image_id": a["image_id"], "category_id": a["category_id"], "score": confidence}, m)
            )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        write_json_atomic(tmp / "gt.json", {**gt, "images": images, "annotations": annotations})
        write_json_atomic(tmp / "coarse.json", coarse)
        for checkpoint in checkpoints:
            refiner = Refiner.from_checkpoint(checkpoint)
            refine_file(refiner, tmp / "gt.json", root / "images", tmp / "coarse.json", tmp / "out.json")
            row = score(tmp / "gt.json", tmp / "coarse.json", tmp / "out.json")
            cells = ", ".join(
                f"{k} {row[k][0] * 100:.2f} -> {row[k][1] * 100:.2f}"
                for k in ("AP", "bAP", "AP_S", "AP_M", "AP_L", "bAP_L")
            )
            print(
                f"{len(images)} held-out images, {len(coarse)} instances, {checkpoint}: "
                f"{refiner.stats.ungated} ungated; {cells}, worse {row['worse'] * 100:.1f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
