#!/usr/bin/env python
"""Does the refiner do better on street scenes when it sees them larger? Each cityscapes-dev
image and its coarse masks are resized by ``scale`` (image bicubic, masks bilinear thresholded
at 0.5), refined there (minimum area times scale², keep thin and the ungated shift times scale),
and the refined masks are resized back (area average, thresholded at 0.5) and scored at the
original size, with the coarse masks through the same round trip unrefined as a control.
Session 20.

    python lab/diagnostics/scale_probe.py cs-maskrcnn28 1 1.5 2 [--checkpoint bpr/models/bpr_default.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bpr.evaluate.dev_table import input_files, score
from bpr.io.coco import load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks, group_by_image, refined_entry
from bpr.refiner import Refiner


def resize_masks(masks: np.ndarray, size: tuple[int, int], down: bool) -> np.ndarray:
    """NxHxW bool resized to ``size`` (h, w): bilinear up, area-average down, threshold 0.5."""
    interp = cv2.INTER_AREA if down else cv2.INTER_LINEAR
    out = np.zeros((masks.shape[0], *size), dtype=bool)
    for k, m in enumerate(masks):
        out[k] = cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=interp) > 0.5
    return out


def run(refiner: Refiner, name: str, scale: float, tmp: Path) -> dict[str, Any]:
    gt_path, images, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
    gt = load_json(gt_path)
    info = {i["id"]: i for i in gt["images"]}
    entries = load_json(coarse_path)
    groups = group_by_image(entries)
    base = refiner.options
    opts = {
        "min_area": int(round(base.min_area * scale * scale)),
        "keep_thin": int(round(base.keep_thin * scale)),
        "ungated_shift": base.ungated_shift * scale if base.ungated_shift else base.ungated_shift,
    }

    refined: list[Any] = [None] * len(entries)
    control: list[Any] = [None] * len(entries)

    def items() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each image and its masks enlarged; the control (the enlarged masks brought back
        unrefined) is filled in on the way."""
        for image_id, idx in groups.items():
            img = info[image_id]
            size = (img["height"], img["width"])
            big = (int(round(size[0] * scale)), int(round(size[1] * scale)))
            masks = resize_masks(entries_to_masks([entries[k] for k in idx], *size), big, False)
            for k, m in zip(idx, resize_masks(masks, size, True)):
                control[k] = refined_entry(entries[k], m)
            image = read_image(images / img["file_name"])
            yield cv2.resize(image, (big[1], big[0]), interpolation=cv2.INTER_CUBIC), masks

    for (image_id, idx), masks in zip(groups.items(), refiner.refine_many(items(), **opts)):
        img = info[image_id]
        for k, m in zip(idx, resize_masks(masks, (img["height"], img["width"]), True)):
            refined[k] = refined_entry(entries[k], m)
    write_json_atomic(tmp / "refined.json", refined)
    write_json_atomic(tmp / "control.json", control)
    return {
        "refined": score(gt_path, coarse_path, tmp / "refined.json"),
        "control": score(gt_path, coarse_path, tmp / "control.json"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("scales", nargs="+", type=float)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    refiner = Refiner.from_checkpoint(args.checkpoint)
    keys = ("AP", "bAP", "AP_M", "AP_L", "bAP_L", "J", "F")
    with tempfile.TemporaryDirectory() as tmp_dir:
        for scale in args.scales:
            rows = run(refiner, args.input, scale, Path(tmp_dir))
            for label, row in rows.items():
                present = [k for k in keys if row.get(k) and row[k][0] is not None]
                cells = ", ".join(f"{k} {row[k][0] * 100:.2f} -> {row[k][1] * 100:.2f}" for k in present)
                print(f"{args.input} x{scale:g} {label}: {cells}, worse {row['worse'] * 100:.1f}%", flush=True)


if __name__ == "__main__":
    main()
