#!/usr/bin/env python
"""Where a refiner's changes land: pixels it fixed and broke, by distance from the coarse boundary.

For every frame of a single-object dev input (davis-near, davis-osvos, davis-rvos) the coarse,
refined and ground-truth foregrounds are compared; each changed pixel is fixed (now right) or
broken (now wrong) and binned by its distance in pixels to the coarse mask's boundary. If the
harm on nearly right masks sat far from the boundary while the gains on real predictions sat
near it (or the other way round), a distance rule at reassembly could keep one and drop the
other; if both sit in the same bins, only the network can tell them apart.

    python lab/diagnostics/change_distance.py --checkpoint CKPT [--inputs davis-near davis-osvos]
        [refine option flags, e.g. --change-margin 0.2 --flip-tta]

Its ``frames``, ``diagnostic_parser`` and ``RefinedFrames`` serve the other single-object
diagnostics here too (f_harm.py, depth_rule.py): the same flags, the same refined frames.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from bpr.cli.common import add_option_flags
from bpr.evaluate.dev_table import CACHE, input_files
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.options import RefineOptions
from bpr.refiner import Refiner

BINS = ((1, 2), (2, 3), (3, 5), (5, 9), (9, 10**9))  # distance to the coarse boundary, [lo, hi) px


def frames(name: str, data: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, coarse masks (N, H, W), ground-truth foreground (H, W)) per frame of a dev input."""
    gt_path, images, coarse_path = input_files(name, data, CACHE)
    gt = load_json(gt_path)
    by_image: dict[int, list[dict]] = {}
    for e in load_json(coarse_path):
        by_image.setdefault(e["image_id"], []).append(e)
    truth: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        truth.setdefault(a["image_id"], []).append(a)
    for info in gt["images"]:
        h, w = info["height"], info["width"]
        entries = by_image.get(info["id"], [])
        if not entries:
            continue
        coarse = np.stack([decode_segmentation(e["segmentation"], h, w) for e in entries])
        fg = np.zeros((h, w), bool)
        for a in truth.get(info["id"], []):
            fg |= decode_segmentation(a["segmentation"], h, w)
        yield read_image(images / info["file_name"]), coarse, fg


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance (px) to the nearest pixel of the other class: 1 next to the boundary."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return np.where(mask, inside, outside)


def diagnostic_parser(doc: str | None, inputs: list[str]) -> argparse.ArgumentParser:
    """The flags every single-object diagnostic here takes: --checkpoint, --inputs (default
    ``inputs``), --backend and every refine option flag; a script adds its own after."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--inputs", nargs="+", default=inputs)
    p.add_argument("--backend", default=None)
    add_option_flags(p)
    return p


class RefinedFrames:
    """The refiner a diagnostic's flags name, with the refine options they set; prints them once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.refiner = Refiner(args.checkpoint, backend=args.backend)
        fields = RefineOptions.__dataclass_fields__
        self.overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
        print(f"checkpoint {args.checkpoint}; {self.refiner.resolve(**self.overrides)}\n")

    def of(self, name: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(coarse masks (N, H, W), ground-truth foreground, refined masks) per frame of a dev input."""
        stream = list(frames(name, shared_data_root()))
        refined = self.refiner.refine_many(((image, coarse) for image, coarse, _ in stream), **self.overrides)
        return [(coarse, truth, r) for (_, coarse, truth), r in zip(stream, refined)]


def main() -> None:
    args = diagnostic_parser(__doc__, ["davis-near", "davis-osvos", "davis-rvos"]).parse_args()
    refined_frames = RefinedFrames(args)
    print("| input | distance px | fixed | broken | net | inside fixed / broken | outside fixed / broken |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for name in args.inputs:
        counts = np.zeros((len(BINS), 2, 2), dtype=np.int64)  # bin, inside/outside the coarse mask, fixed/broken
        for coarse, fg, refined in refined_frames.of(name):
            before, after = coarse.any(0), refined.any(0)
            dist = distance_to_boundary(before)
            changed = before != after
            for b, (lo, hi) in enumerate(BINS):
                in_bin = changed & (dist >= lo) & (dist < hi)
                for side, region in enumerate((before, ~before)):
                    cell = in_bin & region
                    counts[b, side, 0] += int((cell & (after == fg)).sum())
                    counts[b, side, 1] += int((cell & (after != fg)).sum())
        for b, (lo, hi) in enumerate(BINS):
            fixed, broken = counts[b, :, 0].sum(), counts[b, :, 1].sum()
            label = f"{lo}-{hi}" if hi < 10**9 else f">={lo}"
            print(
                f"| {name} | {label} | {fixed:,} | {broken:,} | {fixed - broken:+,} | "
                f"{counts[b, 0, 0]:,} / {counts[b, 0, 1]:,} | {counts[b, 1, 0]:,} / {counts[b, 1, 1]:,} |"
            )


if __name__ == "__main__":
    main()
