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

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_distance import distance_to_boundary, frames  # noqa: E402

from bpr.cli.common import add_option_flags  # noqa: E402
from bpr.evaluate.contours import contour_fscore, tolerance_px  # noqa: E402
from bpr.evaluate.scoring import DEFAULT_F_RATIO  # noqa: E402
from bpr.io.datasets import shared_data_root  # noqa: E402
from bpr.options import RefineOptions  # noqa: E402
from bpr.refiner import Refiner  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--inputs", nargs="+", default=["davis-near", "davis-osvos", "davis-rvos"])
    p.add_argument("--depths", nargs="+", type=int, default=[32, 24, 16, 12])
    p.add_argument("--backend", default=None)
    add_option_flags(p)
    args = p.parse_args()
    refiner = Refiner(args.checkpoint, backend=args.backend)
    overrides = {k: v for k, v in vars(args).items() if k in RefineOptions.__dataclass_fields__ and v is not None}
    print(f"checkpoint {args.checkpoint}; {refiner.resolve(**overrides)}\n")
    print("| input | masks | J | F | worse >1pt |")
    print("| --- | --- | ---: | ---: | ---: |")
    variants = ["coarse", "refined"] + [f"changes deeper than {d} px undone" for d in args.depths]
    for name in args.inputs:
        stream = list(frames(name, shared_data_root()))
        refined_all = refiner.refine_many(((image, coarse) for image, coarse, _ in stream), **overrides)
        j = np.zeros((len(variants), len(stream)))
        f = np.zeros_like(j)
        for k, ((_, coarse, truth), refined) in enumerate(zip(stream, refined_all)):
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
