#!/usr/bin/env python
"""Can an input mask's own detail tell a Mask R-CNN-like mask from a nearly right one?

A 28x28 mask head's output has no detail finer than its grid over the box; a ground-truth mask
through half resolution has. Per instance of every dev input: the pixels a round trip of the
coarse mask through a g x g grid over its own tight box changes (area down, bilinear up,
threshold 0.5), per pixel of its boundary, printed by instance size next to what the refiners
without their gate gain over the gated answer (mean IoU). Session 15 (issue 21): the quartiles
of cs-maskrcnn28 and cs-near overlap, so the rule was not built.

    python lab/diagnostics/grid_detail_probe.py [--refined work/s12/refined_nogate work/s12/refined_ship]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from instance_shift import instance_rows  # lab/diagnostics, the script's own folder

from bpr.evaluate.dev_table import INPUTS, input_files
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.reassemble import boundary_length


def grid_round_trip(mask: np.ndarray, grid: int) -> tuple[int, int]:
    """(pixels changed by the round trip, longer side of the tight box)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    small = cv2.resize(crop, (grid, grid), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    return int((back ^ (crop > 0)).sum()), max(h, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--refined", type=Path, nargs=2, default=[Path("work/s12/refined_nogate"), Path("work/s12/refined_ship")]
    )
    p.add_argument("--grid", type=int, default=28)
    a = p.parse_args()
    for lo, hi in ((32, 64), (64, 128), (128, 100_000)):
        print(f"== tight box side [{lo}, {hi}), area >= 1,024")
        for name in INPUTS:
            gt_path, _, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
            sizes = {i["id"]: (i["height"], i["width"]) for i in load_json(gt_path)["images"]}
            rows = instance_rows(name, a.refined)
            detail, sides = [], []
            for c in load_json(coarse_path):
                m = decode_segmentation(c["segmentation"], *sizes[c["image_id"]])
                if m.any():
                    changed, side = grid_round_trip(m, a.grid)
                    detail.append(changed / max(boundary_length(m), 1))
                    sides.append(side)
            if len(detail) != len(rows):
                raise SystemExit(f"{name}: {len(detail)} coarse masks but {len(rows)} matched instances")
            side, d = np.array(sides), np.array(detail)
            area = np.array([r["area"] for r in rows])
            gain = np.array([r["iou0"] - r["iou1"] for r in rows])
            sel = (side >= lo) & (side < hi) & (area >= 1024)
            if sel.sum() < 3:
                continue
            q = " ".join(f"{v:.2f}" for v in np.percentile(d[sel], [5, 25, 50, 75, 95]))
            print(
                f"{name:14s} n={sel.sum():4d} detail p5/25/50/75/95 {q} | ungated - gated IoU "
                f"{gain[sel].mean() * 100:+.3f}, worse {np.mean(gain[sel] < -0.01) * 100:.1f}%"
            )


if __name__ == "__main__":
    main()
