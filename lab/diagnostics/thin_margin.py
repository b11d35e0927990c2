#!/usr/bin/env python
"""Keep thin parts of the coarse mask unless the refiner is sure: a wider change margin for them.

keep_thin.py adds the coarse mask's thin parts (what an opening of radius R removes) back after
refinement: nearly right DAVIS frames lose far less (cords, bike frames), but the real video
predictions lose J where the refiner rightly removed a thin false part. Here the rule is
applied inside reassembly instead: a covered pixel of the coarse mask's thin part leaves the
mask only where the mean refined probability is below ``--thin-below`` (0 = never). Runs the
whole dev table (bpr-dev-table's inputs and scoring). An experiment (issue 21, session 12).

    python lab/diagnostics/thin_margin.py [--checkpoint C] --radius 4 --thin-below 0.1 --out work/s12/x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

import bpr.reassemble as reassemble_module
from bpr.evaluate.dev_table import INPUTS, print_table, score_inputs
from bpr.io.datasets import shared_data_root
from bpr.refiner import Refiner


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--radius", type=int, default=4)
    p.add_argument("--thin-below", type=float, default=0.0)
    p.add_argument("--no-quality-gate", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * a.radius + 1, 2 * a.radius + 1))
    plain_decide = reassemble_module.decide

    def decide(old: torch.Tensor, prob: torch.Tensor, margin: float) -> torch.Tensor:
        out = plain_decide(old, prob, margin)
        o = old.cpu().numpy().astype(np.uint8)
        opened = cv2.morphologyEx(o, cv2.MORPH_OPEN, disk, borderType=cv2.BORDER_REPLICATE)
        thin = torch.from_numpy((o > 0) & (opened == 0)).to(old.device)
        return torch.where(thin, prob >= a.thin_below, out)

    reassemble_module.decide = decide
    refiner = Refiner.from_checkpoint(a.checkpoint, quality_gate=not a.no_quality_gate)
    rows = score_inputs(refiner, INPUTS, shared_data_root(), Path("work/dev_inputs"))
    print_table(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rows.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
