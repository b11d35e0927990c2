#!/usr/bin/env python
"""Which boundary errors does a refiner fix? Ground-truth boundary pixels of davis-dev-real,
binned by how far the coarse (REAL OSVOS / RVOS) boundary is from them, and the share of each
bin that lies within the DAVIS F tolerance (8 px at 854x480) before and after refinement.

    python scripts/error_profile.py --checkpoint bpr/models/bpr_default.pt [--predictors osvos rvos]

F only counts errors beyond its tolerance, so this table says where F points can come from:
bins 8-32 px are inside a 64 px patch's reach, bins beyond 64 px (missed parts, other
objects) are out of reach of any boundary patch.

A second table looks at precision: contour pixels farther than the tolerance from the ground
truth ("false"), before and after, and how many of the false ones after refinement lie within
the tolerance of a false coarse contour pixel, i.e. a coarse error the refiner kept or only
reshaped (other objects taken as foreground), against false boundary the refiner made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from bpr.evaluate.contours import contour, tolerance_px
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.refiner import Refiner

DATA = shared_data_root() / "davis-dev-real"
BINS = (0, 2, 4, 8, 16, 32, 64, np.inf)


def _distance_to(boundary: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform((~boundary).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def profile(refiner: Refiner, data: Path, predictor: str) -> dict[str, np.ndarray]:
    gt = load_json(data / "gt.json")
    images = {im["id"]: im for im in gt["images"]}
    gt_masks = {a["image_id"]: a["segmentation"] for a in gt["annotations"]}
    n = len(BINS) - 1
    total, hit_before, hit_after = np.zeros(n), np.zeros(n), np.zeros(n)
    precision = np.zeros(5)  # coarse contour, coarse false, refined contour, refined false, of which near coarse false
    for entry in load_json(data / f"{predictor}.json"):
        info = images[entry["image_id"]]
        h, w = info["height"], info["width"]
        g = decode_segmentation(gt_masks[entry["image_id"]], h, w)
        coarse = decode_segmentation(entry["segmentation"], h, w)
        refined = refiner.refine(read_image(data / "images" / info["file_name"]), coarse[None])[0]
        tol = tolerance_px(h, w, 0.008) + 1e-4  # inclusive, as contour_fscore matches
        gb, cb, rb = contour(g), contour(coarse), contour(refined)
        err = _distance_to(cb)[gb]
        after = _distance_to(rb)[gb] <= tol
        which = np.digitize(err, BINS) - 1
        total += np.bincount(which, minlength=n)
        hit_before += np.bincount(which, weights=err <= tol, minlength=n)
        hit_after += np.bincount(which, weights=after, minlength=n)
        to_gt = _distance_to(gb)
        coarse_false, refined_false = cb & (to_gt > tol), rb & (to_gt > tol)
        kept = (
            refined_false & (_distance_to(coarse_false) <= tol) if coarse_false.any() else np.zeros_like(refined_false)
        )
        precision += [cb.sum(), coarse_false.sum(), rb.sum(), refined_false.sum(), kept.sum()]
    return {"total": total, "before": hit_before, "after": hit_after, "precision": precision}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--predictors", nargs="+", default=["osvos", "rvos"])
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args()
    refiner = Refiner.from_checkpoint(args.checkpoint)
    print(f"checkpoint: {args.checkpoint}\n")
    print("| predictor | coarse error (px) | share of GT boundary | within tolerance before | after |")
    print("| --- | --- | ---: | ---: | ---: |")
    results = {pred: profile(refiner, args.data, pred) for pred in args.predictors}
    for pred, r in results.items():
        for k in range(len(BINS) - 1):
            label = f"{BINS[k]:g}-{BINS[k + 1]:g}" if np.isfinite(BINS[k + 1]) else f"> {BINS[k]:g}"
            t = max(r["total"][k], 1)
            print(
                f"| {pred} | {label} | {100 * r['total'][k] / r['total'].sum():.1f}% | "
                f"{100 * r['before'][k] / t:.1f}% | {100 * r['after'][k] / t:.1f}% |"
            )
    print(
        "\n| predictor | contour px before | false before | contour px after | false after | false after, at a "
        "false coarse contour |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for pred, r in results.items():
        cb, cf, rb, rf, kept = r["precision"]
        print(
            f"| {pred} | {cb:.0f} | {100 * cf / max(cb, 1):.1f}% | {rb:.0f} | {100 * rf / max(rb, 1):.1f}% | "
            f"{100 * kept / max(rf, 1):.1f}% |"
        )


if __name__ == "__main__":
    main()
