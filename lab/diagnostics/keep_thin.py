#!/usr/bin/env python
"""What if the refiner could never remove the thin parts of a coarse mask?

Without its gate, the default pair makes 19 of 89 nearly right DAVIS frames worse, and they
are paragliding-launch, bmx-trees, kite-surf and motocross frames: cords, lines and bike frames
that the nearly right mask keeps in part and the refiner erases (a few hundred pixels a frame,
1-4 IoU points). This refines every dev input, then adds back to each refined mask the coarse
mask's thin parts (what a morphological opening of radius R removes from it) and scores
before / after both ways. An experiment (issue 21, session 11), not in the library.

    python lab/diagnostics/keep_thin.py --radius 2 [--no-quality-gate] [--json out.json]
        [--refined-dir work/s12/refined_<name>] [--min-extent L]

``--refined-dir`` keeps each input's refined masks there and reuses them on the next run, so
variants of the rule cost only scoring. ``--min-extent`` keeps only thin parts whose connected
piece spans at least L pixels (bounding-box diagonal): cords and frames, not the corners an
opening trims off every staircase boundary.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bpr.evaluate.dev_table import INPUTS, input_files, refine_file, score
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.refinement import thin_parts
from bpr.refiner import Refiner


def long_thin_parts(mask: np.ndarray, radius: int, min_extent: float = 0.0) -> np.ndarray:
    """The library's thin parts of ``mask`` (bpr.refinement.thin_parts), only in connected
    pieces spanning at least ``min_extent`` pixels."""
    thin = thin_parts(mask, radius)
    if min_extent <= 0 or not thin.any():
        return thin
    count, labels, stats, _ = cv2.connectedComponentsWithStats(thin.astype(np.uint8), connectivity=8)
    extent = np.hypot(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = extent >= min_extent
    keep[0] = False
    return keep[labels]


def thin_gaps(mask: np.ndarray, radius: int) -> np.ndarray:
    """The pixels outside ``mask`` that a closing with a disk of ``radius`` adds: gaps and holes
    narrower than the disk (twigs across a rider, the space between a cord and a body)."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return ~mask & (cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk) > 0)


def holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels of ``mask`` enclosed by it: 4-connected background pieces that do not
    reach the image's edge."""
    count, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = np.ones(count, dtype=bool)
    enclosed[0] = False
    enclosed[edge] = False
    return enclosed[labels]


def with_thin_parts_kept(
    gt_path: Path,
    coarse_path: Path,
    refined_path: Path,
    radius: int,
    out: Path,
    min_extent: float = 0.0,
    gaps: bool = False,
    keep_holes: bool = False,
) -> None:
    sizes = {i["id"]: (i["height"], i["width"]) for i in load_json(gt_path)["images"]}
    kept = []
    for c, r in zip(load_json(coarse_path), load_json(refined_path), strict=True):
        h, w = sizes[c["image_id"]]
        coarse = decode_segmentation(c["segmentation"], h, w)
        refined = decode_segmentation(r["segmentation"], h, w) | long_thin_parts(coarse, radius, min_extent)
        if gaps:
            refined &= ~thin_gaps(coarse, radius)
        if keep_holes:
            refined &= ~holes(coarse)
        box, area = mask_to_bbox(refined), int(refined.sum())
        kept.append({**r, "segmentation": encode_mask(refined), "bbox": box, "area": area})
    write_json_atomic(out, kept)


def gain(row: dict, key: str) -> float:
    """After minus before, in points."""
    return (row[key][1] - row[key][0]) * 100


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--radius", type=int, default=2)
    p.add_argument("--no-quality-gate", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--refined-dir", type=Path, default=None)
    p.add_argument("--min-extent", type=float, default=0.0)
    p.add_argument("--gaps", action="store_true", help="also keep thin gaps of the coarse mask open")
    p.add_argument("--holes", action="store_true", help="also keep the coarse mask's holes open")
    a = p.parse_args()
    refiner = Refiner.from_checkpoint(a.checkpoint, quality_gate=not a.no_quality_gate)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in INPUTS:
            gt_path, images, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
            kept = tmp / f"{name}.kept.json"
            refined = (a.refined_dir or tmp) / f"{name}.refined.json"
            if not refined.exists():
                refined.parent.mkdir(parents=True, exist_ok=True)
                refine_file(refiner, gt_path, images, coarse_path, refined)
            with_thin_parts_kept(gt_path, coarse_path, refined, a.radius, kept, a.min_extent, a.gaps, a.holes)
            plain, thin = score(gt_path, coarse_path, refined), score(gt_path, coarse_path, kept)
            rows[name] = {"plain": plain, "kept": thin}
            keys = ("AP", "bAP", "AP_L", "bAP_L") if name.startswith("cs-") else ()
            cells = [f"{k} {gain(plain, k):+.2f} -> {gain(thin, k):+.2f}" for k in (*keys, "J", "F")]
            worse = f"| worse {plain['worse'] * 100:.1f}% -> {thin['worse'] * 100:.1f}%"
            print(name, " | ".join(cells), worse, flush=True)
    if a.json:
        write_json_atomic(a.json, rows)


if __name__ == "__main__":
    main()
