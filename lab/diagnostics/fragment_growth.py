"""What refinement adds to the detached parts of real coarse masks, and whether it is right.

For every DAVIS frame of a dev input whose coarse mask has more than one 8-connected part:
each part other than the largest that refinement grew (pixels added and connected to that
part, not to the largest), with its area, the pixels added, how many of them are foreground
in the ground truth, the largest part's area and the gap between the two. Sorted by pixels
added; a grown region that touches two parts is listed under each. It is how
``fragment_reach`` was found and judged (models/MODEL_CARD.md, session 6).

    python lab/diagnostics/fragment_growth.py CHECKPOINT [osvos|rvos|RESULTS.json] [--change-margin M]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.refiner import Refiner

ROOT = "../shared/data/davis-dev-real"

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoint")
p.add_argument("input", nargs="?", default="osvos")
p.add_argument("--change-margin", type=float)
args = p.parse_args()
gt = load_json(f"{ROOT}/gt.json")
info = {i["id"]: i for i in gt["images"]}
results = load_json(args.input if args.input.endswith(".json") else f"{ROOT}/{args.input}.json")
refiner = Refiner.from_checkpoint(args.checkpoint, change_margin=args.change_margin)
rows = []
for entry in results:
    img = info[entry["image_id"]]
    h, w = img["height"], img["width"]
    coarse = decode_segmentation(entry["segmentation"], h, w)
    anns = [a for a in gt["annotations"] if a["image_id"] == entry["image_id"]]
    truth = np.logical_or.reduce([decode_segmentation(a["segmentation"], h, w) for a in anns])
    count, parts, stats, _ = cv2.connectedComponentsWithStats(coarse.astype(np.uint8), connectivity=8)
    if count <= 2:
        continue
    refined = refiner.refine(read_image(f"{ROOT}/images/{img['file_name']}"), coarse[None])[0]
    body = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    _, regions = cv2.connectedComponents(refined.astype(np.uint8), connectivity=8)
    on_body = set(np.unique(regions[(parts == body) & refined])) - {0}
    gap = cv2.distanceTransform((parts != body).astype(np.uint8), cv2.DIST_L2, 5)
    added = refined & ~coarse
    for k in range(1, count):
        own = set(np.unique(regions[(parts == k) & refined])) - {0} - on_body
        grown = added & np.isin(regions, list(own)) if own else np.zeros_like(added)
        if k == body or not grown.any():
            continue
        n = int(grown.sum())
        rows.append(
            (
                img["file_name"],
                int(stats[k, cv2.CC_STAT_AREA]),
                n,
                int((grown & truth).sum()),
                int(stats[body, cv2.CC_STAT_AREA]),
                float(gap[parts == k].min()),
            )
        )
print("| frame | part area | added | of them right | largest part | gap (px) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for frame, area, n, right, body_area, gap_px in sorted(rows, key=lambda r: -r[2]):
    print(f"| {frame} | {area} | {n} | {right} ({100 * right / n:.0f}%) | {body_area} | {gap_px:.0f} |")
