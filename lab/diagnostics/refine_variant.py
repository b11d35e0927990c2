#!/usr/bin/env python
"""Refine every dev input with the default model at other settings, into one folder of
``<input>.refined.json`` files: what instance_shift_compose.py (ANSWER_DIR) and keep_thin.py
(--refined-dir) read, so that rules can be composed and scored without refining again.

    python lab/diagnostics/refine_variant.py work/s14/refined_ng_m0 quality_gate=False change_margin=0.0 \\
        [keep_thin=4] [fragment_reach=0] [iterations=2] [--checkpoint CKPT]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bpr.evaluate.dev_table import INPUTS, input_files, refine_file
from bpr.io.datasets import shared_data_root
from bpr.options import option_types
from bpr.refiner import Refiner


def parse(assignment: str) -> tuple[str, object]:
    """``name=value`` with the option's own type (booleans as True / False)."""
    name, value = assignment.split("=", 1)
    kind = option_types()[name]
    return name, (value == "True") if kind is bool else kind(value)


def main() -> None:
    args = sys.argv[1:]
    checkpoint = None
    if "--checkpoint" in args:
        at = args.index("--checkpoint")
        checkpoint = args[at + 1]
        del args[at : at + 2]
    out, options = Path(args[0]), dict(parse(a) for a in args[1:])
    refiner = Refiner.from_checkpoint(checkpoint, **options)
    print(out, refiner.options, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in INPUTS:
        gt, images, coarse = input_files(name, shared_data_root(), Path("work/dev_inputs"))
        t0 = time.perf_counter()
        refine_file(refiner, gt, images, coarse, out / f"{name}.refined.json")
        print(name, f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
