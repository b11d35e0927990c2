#!/usr/bin/env python
"""Refine the REAL OSVOS and RVOS predictions of davis-dev-real with a checkpoint and score
before / after: the acceptance test of a default model (and how the recipe mix is chosen).

    python scripts/evaluate_refiner.py --checkpoint bpr/models/bpr_default.pt [--nms 0.25 0.55] [--json out.json]

Runs bpr-refine's own code path, then bpr-eval's. Prints, per predictor and NMS threshold:
J (mean IoU), F (DAVIS contour accuracy), AF, mask AP, boundary AP, and the share of frames
that got worse by more than 1 IoU point.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bpr.cli.refine import main as refine_main
from bpr.evaluate import evaluate
from bpr.io.datasets import shared_data_root

DATA = shared_data_root() / "davis-dev-real"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--predictors", nargs="+", default=["osvos", "rvos"])
    p.add_argument("--nms", type=float, nargs="+", default=[0.25])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        help="one more bpr-refine flag per use, e.g. --extra=--iterations=2 --extra=--no-flip-tta",
    )
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pred in args.predictors:
            for nms in args.nms:
                out = Path(tmp) / f"{pred}.nms{nms}.json"
                code = refine_main(
                    [
                        str(args.data / f"{pred}.json"),
                        "--images",
                        str(args.data / "images"),
                        "--image-info",
                        str(args.data / "gt.json"),
                        "--checkpoint",
                        str(args.checkpoint),
                        "--nms-iou",
                        str(nms),
                        "--out",
                        str(out),
                        "--quiet",
                        *args.extra,
                    ]
                )
                if code:
                    raise SystemExit(code)
                ev = evaluate(args.data / "gt.json", [args.data / f"{pred}.json", out], names=[pred, "refined"])
                before, after = ev.summaries
                rows.append(
                    {
                        "predictor": pred,
                        "nms": nms,
                        "J": [before.single.j, after.single.j],
                        "F": [before.single.f, after.single.f],
                        "AF": [before.af, after.af],
                        "mask_AP": [before.mask_ap["AP"], after.mask_ap["AP"]],
                        "boundary_AP": [before.boundary_ap["AP"], after.boundary_ap["AP"]],
                        "improved": after.vs_baseline.improved,
                        "worse_by_1pt": after.vs_baseline.worse_by_1pt,
                    }
                )
    print(f"checkpoint: {args.checkpoint}\n")
    print(
        "| predictor | NMS | J before | J after | F before | F after | AF before | AF after | mask AP before | "
        "after | boundary AP before | after | frames improved | worse by >1 pt |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cells = [f"{100 * v:.2f}" for k in ("J", "F", "AF", "mask_AP", "boundary_AP") for v in r[k]]
        print(
            f"| {r['predictor']} | {r['nms']} | "
            + " | ".join(cells)
            + f" | {100 * r['improved']:.1f}% | {100 * r['worse_by_1pt']:.1f}% |"
        )
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
