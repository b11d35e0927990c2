#!/usr/bin/env python
"""benchmarks/benchmark.py with two refiners averaged (lab/diagnostics/ensemble_dev_table.py's
predict_batch, same BPR_ENS_* variables): the ensemble's speed, to set beside the default's.

    BPR_ENS_SECOND=bpr/models/bpr_default.pt BPR_ENS_GATE=second \\
        python lab/diagnostics/ensemble_benchmark.py --checkpoint CKPT --input-sizes 64 --backends openvino
"""

import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
import ensemble_dev_table  # noqa: E402,F401  (patches bpr.passes.predict_batch)

runpy.run_path(str(here.parents[1] / "benchmarks" / "benchmark.py"), run_name="__main__")
