#!/usr/bin/env python
"""Which nearly right DAVIS frames a refiner makes worse, and by how much.

Refines the dev table's ``davis-near`` input (ground truth through half resolution) with the
default model (or ``--checkpoint``), without and with its gate, and lists every frame whose IoU
with the ground truth drops by more than 1 point: its object's area, the input's IoU, the
refined IoU and the pixels changed. Session 11 found them to be frames with thin structures
(paragliding cords, bike frames) that the refiners erase. An experiment (issue 21), not in the
library.

    python lab/diagnostics/near_frames.py [--checkpoint C]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bpr.evaluate.dev_table import input_files, refine_file
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.refiner import Refiner


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    a = p.parse_args()
    gt_path, images, coarse_path = input_files("davis-near", shared_data_root(), Path("work/dev_inputs"))
    gt = load_json(gt_path)
    info = {i["id"]: i for i in gt["images"]}
    truth = {x["image_id"]: x for x in gt["annotations"]}
    coarse = load_json(coarse_path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "refined.json"
        for gate in (False, True):
            refine_file(Refiner.from_checkpoint(a.checkpoint, quality_gate=gate), gt_path, images, coarse_path, out)
            rows = []
            for c, r in zip(coarse, load_json(out), strict=True):
                im = info[c["image_id"]]
                h, w = im["height"], im["width"]
                g = decode_segmentation(truth[c["image_id"]]["segmentation"], h, w)
                cm, rm = decode_segmentation(c["segmentation"], h, w), decode_segmentation(r["segmentation"], h, w)
                rows.append((im["file_name"], int(g.sum()), iou(cm, g), iou(rm, g), int((cm ^ rm).sum())))
            worse = sorted((x for x in rows if x[3] < x[2] - 0.01), key=lambda x: x[3] - x[2])
            print(f"gate {gate}: {len(worse)} of {len(rows)} frames worse by more than 1 IoU point")
            for name, area, before, after, changed in worse:
                print(f"  {name} area {area} input IoU {before:.4f} refined {after:.4f} changed px {changed}")


if __name__ == "__main__":
    main()
