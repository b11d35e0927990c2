#!/usr/bin/env python
"""Small street-scene instances refined at their native scale and magnified.

The ground truth pasted into the pipeline's patches lifts cs-maskrcnn28 mask AP to 95.56 at the
default minimum area (1,024 px) and to 99.94 with none (lab/diagnostics/oracle.py): the small
instances hold the larger part of the headroom. Here the instances of cs-maskrcnn28 with an area
in [lo, hi) are refined alone by the default model at minimum area 0, for each configuration
``PATCH:g|n`` (patch size; with or without the gate; the patch is fed at the network's input size,
so patch 32 is a 2x magnification), and their IoU with the matched ground truth compared with the
input's. Session 15 (issue 21): neither scale gains (lab/runs/small_instance_probe_s15.txt).

    python lab/diagnostics/small_instance_probe.py 0 1024 64:n 32:n 32:g
"""

from __future__ import annotations

import argparse

import numpy as np
from dev_images import street_scenes_maskrcnn28

from bpr.io.coco import decode_segmentation
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks
from bpr.refiner import Refiner

DATA = shared_data_root() / "cityscapes-dev"


def scores(masks: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """(N, 2): each mask's IoU with its ground truth, and the pixels they disagree on."""
    inter = (masks & truths).reshape(len(masks), -1).sum(1)
    union = (masks | truths).reshape(len(masks), -1).sum(1)
    return np.stack([inter / np.maximum(union, 1), (masks ^ truths).reshape(len(masks), -1).sum(1)], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lo", type=int)
    p.add_argument("hi", type=int)
    p.add_argument("configs", nargs="+", help="PATCH:g (with the gate) or PATCH:n (without)")
    a = p.parse_args()
    gt, truths, entries, groups = street_scenes_maskrcnn28()
    info = {i["id"]: i for i in gt["images"]}
    refiners = {}
    for c in a.configs:
        patch, gate = c.split(":")
        refiners[c] = Refiner.from_checkpoint(
            None, patch_size=int(patch), quality_gate=gate == "g", min_area=0, ungated_shift=0.0
        )
    before: list = []
    after: dict = {c: [] for c in a.configs}
    for image_id, idx in groups.items():
        h, w = info[image_id]["height"], info[image_id]["width"]
        coarse = entries_to_masks([entries[k] for k in idx], h, w)
        areas = coarse.reshape(len(coarse), -1).sum(1)
        coarse = coarse[(areas >= a.lo) & (areas < a.hi)]
        if not len(coarse):
            continue
        g = np.stack([decode_segmentation(x["segmentation"], h, w) for x in truths[image_id]])
        inter = (coarse[:, None] & g[None]).reshape(len(coarse), len(g), -1).sum(-1)
        union = (coarse[:, None] | g[None]).reshape(len(coarse), len(g), -1).sum(-1)
        match = g[(inter / np.maximum(union, 1)).argmax(1)]

        before.append(scores(coarse, match))
        image = read_image(DATA / "images" / info[image_id]["file_name"])
        for c, r in refiners.items():
            after[c].append(scores(r.refine(image, coarse), match))
    b = np.concatenate(before)
    print(
        f"area [{a.lo},{a.hi}): {len(b)} instances, input mean IoU {b[:, 0].mean() * 100:.2f}, "
        f"wrong px {int(b[:, 1].sum())}"
    )
    for c in a.configs:
        r = np.concatenate(after[c])
        d = r[:, 0] - b[:, 0]
        print(
            f"  {c}: mean IoU {r[:, 0].mean() * 100:.2f} ({d.mean() * 100:+.2f}), wrong px {int(r[:, 1].sum())}, "
            f"better >1pt {np.mean(d > 0.01) * 100:.1f}%, worse >1pt {np.mean(d < -0.01) * 100:.1f}%"
        )


if __name__ == "__main__":
    main()
