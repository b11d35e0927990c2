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

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_distance import frames  # noqa: E402

from bpr.cli.common import add_option_flags  # noqa: E402
from bpr.evaluate.contours import contour, contour_fscore, tolerance_px  # noqa: E402
from bpr.evaluate.scoring import DEFAULT_F_RATIO  # noqa: E402
from bpr.io.datasets import shared_data_root  # noqa: E402
from bpr.options import RefineOptions  # noqa: E402
from bpr.refiner import Refiner  # noqa: E402


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--inputs", nargs="+", default=["davis-near"])
    p.add_argument("--backend", default=None)
    p.add_argument("--show", type=int, default=3, help="regions listed per frame")
    add_option_flags(p)
    args = p.parse_args()
    refiner = Refiner(args.checkpoint, backend=args.backend)
    overrides = {k: v for k, v in vars(args).items() if k in RefineOptions.__dataclass_fields__ and v is not None}
    print(f"checkpoint {args.checkpoint}; {refiner.resolve(**overrides)}\n")
    for name in args.inputs:
        stream = list(frames(name, shared_data_root()))
        refined_all = refiner.refine_many(((image, coarse) for image, coarse, _ in stream), **overrides)
        far = {"added": [0, 0], "removed": [0, 0]}  # regions and pixels beyond the tolerance
        drops = []
        for k, ((_, coarse, truth), refined) in enumerate(zip(stream, refined_all)):
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
        print(f"## {name}: {len(drops)} of {len(stream)} frames lose F, {100 * total / len(stream):+.2f} points in all")
        for kind, (count, pixels) in far.items():
            print(f"- wrongly {kind} regions beyond the tolerance: {count} ({pixels:,} px)")
        for d, k, regions, tol in drops[:10]:
            shown = ", ".join(f"{kind} {size} px reaching {reach:.0f} px" for kind, size, reach in regions[: args.show])
            print(f"- frame {k}: F {100 * d:+.2f} (tolerance {tol} px): {shown}")
        print()


if __name__ == "__main__":
    main()
