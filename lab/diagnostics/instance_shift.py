#!/usr/bin/env python
"""How far does the refiner move each instance, and does that tell right masks from wrong ones?

For every instance of every dev input: its coarse mask's boundary length, the pixels the
refined answer of each ``--refined-dir`` changes (the first dir: the refiner without its gate;
the second: with it), and the IoU with the ground truth before and after. Then, for shifts t
(changed pixels per boundary pixel of the coarse mask), two instance rules on mean IoU and the
share of instances worse by more than 1 point: A, the ungated answer where its shift is at
least t, else the coarse mask; B, the ungated answer there, else the gated one. Session 14
(issue 21): nearly right masks are moved under 0.5 px, real video predictions mostly more, so
rule B became the library's ``ungated_shift``.

    python lab/diagnostics/instance_shift.py work/s12/refined_nogate work/s12/refined_ship \\
        [--json work/s14/inst.json]

The refined dirs hold ``<input>.refined.json`` per dev input (keep_thin.py --refined-dir writes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bpr.evaluate.dev_table import INPUTS, input_files
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.reassemble import boundary_length


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def instance_rows(name: str, dirs: list[Path]) -> list[dict]:
    """One row per non-empty coarse instance: area, boundary length, IoU before, and per refined
    dir the pixels changed and the IoU after (the ground truth matched by best IoU in its image)."""
    gt_path, _, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
    gt = load_json(gt_path)
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    truths: dict = {}
    for a in gt["annotations"]:
        truths.setdefault(a["image_id"], []).append(a)
    refined = [load_json(d / f"{name}.refined.json") for d in dirs]
    rows = []
    for k, c in enumerate(load_json(coarse_path)):
        h, w = sizes[c["image_id"]]
        coarse = decode_segmentation(c["segmentation"], h, w)
        if not coarse.any():
            continue
        scored = [
            (iou(coarse, g), g)
            for g in (decode_segmentation(a["segmentation"], h, w) for a in truths.get(c["image_id"], []))
        ]
        if not scored:
            continue
        before, truth = max(scored, key=lambda t: t[0])
        row = {"area": int(coarse.sum()), "length": boundary_length(coarse), "iou": before}
        for j, r in enumerate(refined):
            m = decode_segmentation(r[k]["segmentation"], h, w)
            row[f"changed{j}"] = int((m ^ coarse).sum())
            row[f"iou{j}"] = iou(m, truth)
        rows.append(row)
    return rows


def print_rules(rows: dict[str, list[dict]], shifts: list[float]) -> None:
    for name, rs in rows.items():
        get = {k: np.array([r[k] for r in rs], dtype=float) for k in rs[0]}
        shift = get["changed0"] / np.maximum(get["length"], 1)
        free, gated = get["iou0"] - get["iou"], get["iou1"] - get["iou"]
        print(
            f"== {name}: {len(rs)} instances; ungated mean IoU {free.mean() * 100:+.3f}, worse "
            f"{np.mean(free < -0.01) * 100:.1f}% | gated {gated.mean() * 100:+.3f}, "
            f"worse {np.mean(gated < -0.01) * 100:.1f}%"
        )
        for t in shifts:
            a, b = np.where(shift < t, 0, free), np.where(shift < t, gated, free)
            print(
                f"  t={t}: A {a.mean() * 100:+.3f} worse {np.mean(a < -0.01) * 100:.1f}% | B {b.mean() * 100:+.3f} "
                f"worse {np.mean(b < -0.01) * 100:.1f}% (shift >= t: {np.mean(shift >= t) * 100:.0f}%)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ungated_dir", type=Path)
    p.add_argument("gated_dir", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--shifts", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5])
    a = p.parse_args()
    rows = {name: instance_rows(name, [a.ungated_dir, a.gated_dir]) for name in INPUTS}
    if a.json:
        a.json.write_text(json.dumps(rows))
    print_rules(rows, a.shifts)


if __name__ == "__main__":
    main()
