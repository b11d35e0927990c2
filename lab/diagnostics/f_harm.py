#!/usr/bin/env python
"""Which changes cost boundary F on a single-object dev input, and how far from the truth they lie.

DAVIS F forgives any contour within ceil(0.008 x diagonal) px (8 px on 854x480) of the true one,
so on nearly right masks F can only fall where refinement draws contour far from the truth: a
new island or hole, a thin part cut off, a blob grown over a neighbour. For every frame whose F
drops, each 8-connected region of wrongly changed pixels is listed with its size, whether it was
added or removed, and its greatest distance to the true contour: regions beyond the tolerance
are the ones F counts.

    python lab/diagnostics/f_harm.py --checkpoint CKPT [--inputs davis-near] [refine option flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_distance import RefinedFrames, diagnostic_parser  # noqa: E402

from bpr.evaluate.contours import contour, contour_fscore, tolerance_px  # noqa: E402
from bpr.evaluate.scoring import DEFAULT_F_RATIO  # noqa: E402


def wrong_regions(before: np.ndarray, after: np.ndarray, truth: np.ndarray) -> list[tuple[str, int, float]]:
    """(added | removed, pixels, greatest distance to the true contour) per 8-connected region of
    pixels the refinement changed and got wrong, largest first."""
    dist = cv2.distanceTransform((~contour(truth)).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    out = []
    for kind, region in (("added", after & ~before & ~truth), ("removed", before & ~after & truth)):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(region.view(np.uint8), connectivity=8)
        for i in range(1, n):
            out.append((kind, int(stats[i, cv2.CC_STAT_AREA]), float(dist[labels == i].max())))
    return sorted(out, key=lambda r: -r[1])


def main() -> None:
    p = diagnostic_parser(__doc__, ["davis-near"])
    p.add_argument("--show", type=int, default=3, help="regions listed per frame")
    args = p.parse_args()
    refined_frames = RefinedFrames(args)
    for name in args.inputs:
        triples = refined_frames.of(name)
        far = {"added": [0, 0], "removed": [0, 0]}  # regions and pixels beyond the tolerance
        drops = []
        for k, (coarse, truth, refined) in enumerate(triples):
            before, after = coarse.any(0), refined.any(0)
            tol = tolerance_px(*truth.shape, DEFAULT_F_RATIO)
            f0, f1 = contour_fscore(before, truth, tol).f, contour_fscore(after, truth, tol).f
            regions = wrong_regions(before, after, truth)
            for kind, size, reach in regions:
                if reach > tol:
                    far[kind][0] += 1
                    far[kind][1] += size
            if f1 < f0:
                drops.append((f1 - f0, k, regions, tol))
        drops.sort()
        total = sum(d for d, *_ in drops)
        mean_drop = 100 * total / len(triples)
        print(f"## {name}: {len(drops)} of {len(triples)} frames lose F, {mean_drop:+.2f} points in all")
        for kind, (count, pixels) in far.items():
            print(f"- wrongly {kind} regions beyond the tolerance: {count} ({pixels:,} px)")
        for d, k, regions, tol in drops[:10]:
            shown = ", ".join(f"{kind} {size} px reaching {reach:.0f} px" for kind, size, reach in regions[: args.show])
            print(f"- frame {k}: F {100 * d:+.2f} (tolerance {tol} px): {shown}")
        print()


if __name__ == "__main__":
    main()
