#!/usr/bin/env python
"""Would a depth rule help? Mean J / F when changes deeper than D px from the coarse boundary are undone.

f_harm.py shows that nearly right masks lose F where refinement removes chunks 20-35 px inside
the object, bounded by a patch's edges. This refines each single-object dev input once and
scores the refined masks with every change at distance >= D from the coarse boundary put back
to its coarse value, for several D: if the nearly right input recovered while the real
predictions kept their gains, the rule would be worth building into reassembly.

    python lab/diagnostics/depth_rule.py --checkpoint CKPT [--depths 32 24 16 12] [refine option flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_distance import RefinedFrames, diagnostic_parser, distance_to_boundary  # noqa: E402

from bpr.evaluate.contours import contour_fscore, tolerance_px  # noqa: E402
from bpr.evaluate.scoring import DEFAULT_F_RATIO  # noqa: E402


def main() -> None:
    p = diagnostic_parser(__doc__, ["davis-near", "davis-osvos", "davis-rvos"])
    p.add_argument("--depths", nargs="+", type=int, default=[32, 24, 16, 12])
    args = p.parse_args()
    refined_frames = RefinedFrames(args)
    print("| input | masks | J | F | worse >1pt |")
    print("| --- | --- | ---: | ---: | ---: |")
    variants = ["coarse", "refined"] + [f"changes deeper than {d} px undone" for d in args.depths]
    for name in args.inputs:
        triples = refined_frames.of(name)
        j = np.zeros((len(variants), len(triples)))
        f = np.zeros_like(j)
        for k, (coarse, truth, refined) in enumerate(triples):
            before, after = coarse.any(0), refined.any(0)
            depth = distance_to_boundary(before)
            tol = tolerance_px(*truth.shape, DEFAULT_F_RATIO)
            masks = [before, after] + [np.where(depth >= d, before, after) for d in args.depths]
            for v, m in enumerate(masks):
                j[v, k] = (m & truth).sum() / max(int((m | truth).sum()), 1)
                f[v, k] = contour_fscore(m, truth, tol).f
        for v, label in enumerate(variants):
            worse = 100 * np.mean(j[v] < j[0] - 0.01)
            print(f"| {name} | {label} | {100 * j[v].mean():.2f} | {100 * f[v].mean():.2f} | {worse:.1f}% |")


if __name__ == "__main__":
    main()
