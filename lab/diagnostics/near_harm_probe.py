#!/usr/bin/env python
"""Does a refiner harm nearly right masks of images it trained on, once they are rescaled?

The dev table's nearly right DAVIS masks lose frames to chunks the refiner removes; the gate
cannot learn that harm because the held-out training images (54 salient ones) hardly show it.
If training images, rescaled so their pixels no longer match what the refiner fitted, show
the same harm, they are a source of gate training data. This probe builds a rescaled copy of
a COCO set (images and masks), gives every instance its nearly right mask (through half
resolution, as the dev table's ``*-near`` inputs), refines with the given settings and prints
J, F and the share of frames worse by more than 1 IoU point, for held-in and held-out images
apart. An experiment (issue 21, session 11), not in the library.

    python lab/diagnostics/near_harm_probe.py --set davis-train --scale 0.7 --every 10 \\
        --checkpoint bpr/models/bpr_default.pt --no-quality-gate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from bpr.evaluate.dev_table import derived_input, refine_file, score
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.refiner import Refiner
from bpr.train.build_patches import is_held_out


def rescaled_set(name: str, scale: float, every: int, out: Path) -> tuple[Path, Path]:
    """Every ``every``-th image of set ``name`` and its masks resized by ``scale`` (gt.json, images/).
    Images keep their file names (JPEG, quality 95), so the held-out split (a hash of the name)
    is the source set's: a patch set built from the copy holds out the same images."""
    root = shared_data_root() / name
    gt = load_json(root / "gt.json")
    images = gt["images"][::every]
    keep = {i["id"] for i in images}
    (out / "images").mkdir(parents=True, exist_ok=True)
    new_images, sizes = [], {}
    for info in images:
        image = read_image(root / "images" / info["file_name"])
        h, w = max(1, round(info["height"] * scale)), max(1, round(info["width"] * scale))
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        path = out / "images" / info["file_name"]
        cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        new_images.append({**info, "file_name": path.name, "height": h, "width": w, "source": info["file_name"]})
        sizes[info["id"]] = (info["height"], info["width"], h, w)
    anns = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in keep or ann.get("iscrowd"):
            continue
        h0, w0, h, w = sizes[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], h0, w0).astype(np.float32)
        small = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR) > 0.5
        if small.sum() < 64:
            continue
        anns.append({**ann, "segmentation": encode_mask(small), "bbox": mask_to_bbox(small), "area": int(small.sum())})
    out_gt = {**gt, "images": new_images, "annotations": anns}
    write_json_atomic(out / "gt.json", out_gt)
    return out / "gt.json", out / "images"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--set", default="davis-train")
    p.add_argument("--scale", type=float, default=0.7)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--checkpoint", default="bpr/models/bpr_default.pt")
    p.add_argument("--no-quality-gate", action="store_true")
    p.add_argument("--change-margin", type=float, default=None)
    p.add_argument("--out", type=Path, default=Path("work/s11/probe"))
    p.add_argument("--build-only", action="store_true", help="only write the rescaled set (for bpr-build-patches)")
    a = p.parse_args()
    out = a.out / f"{a.set}_x{a.scale:g}_every{a.every}"
    gt_path, images = rescaled_set(a.set, a.scale, a.every, out)
    if a.build_only:
        return
    options = {} if a.change_margin is None else {"change_margin": a.change_margin}
    refiner = Refiner.from_checkpoint(a.checkpoint, quality_gate=not a.no_quality_gate, **options)
    gt = load_json(gt_path)
    held = {i["id"]: is_held_out(i["file_name"], 0.05) for i in gt["images"]}
    near = derived_input(gt_path, "near")  # a name is held out as its source's
    result = {}
    for part in ("held-in", "held-out"):
        ids = {k for k, v in held.items() if v == (part == "held-out")}
        if not ids:
            continue
        part_gt = {
            **gt,
            "images": [i for i in gt["images"] if i["id"] in ids],
            "annotations": [x for x in gt["annotations"] if x["image_id"] in ids],
        }
        part_gt_path, coarse_path = out / f"{part}.gt.json", out / f"{part}.near.json"
        write_json_atomic(part_gt_path, part_gt)
        write_json_atomic(coarse_path, [e for e in near if e["image_id"] in ids])
        run = refine_file(refiner, part_gt_path, images, coarse_path, out / f"{part}.refined.json")
        row = score(part_gt_path, coarse_path, out / f"{part}.refined.json")
        result[part] = {
            "images": len(ids),
            "J": row["J"],
            "F": row["F"],
            "worse": row["worse"],
            "gated": run["gated"],
            "patches": run["patches"],
        }
        print(a.set, a.scale, part, json.dumps(result[part]))
    write_json_atomic(out / f"result_gate{int(not a.no_quality_gate)}.json", result)


if __name__ == "__main__":
    main()
