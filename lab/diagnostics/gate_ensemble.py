"""The full dev table with the gates of several checkpoints of one refiner averaged (logits).

Gates trained with other seeds or data disagree on which frames to leave alone; does their
average do better than any one? (models/MODEL_CARD.md, session 6: it did not.) The refiner
and every setting come from the first checkpoint; each gate carries its own threshold.

    python lab/diagnostics/gate_ensemble.py OUT.json --change-margin M GATED.pt GATED.pt [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from bpr.evaluate import dev_table
from bpr.modeling import load_refiner
from bpr.refiner import Refiner


class MeanGate(nn.Module):
    def __init__(self, gates: list[nn.Module]) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([gate(*inputs) for gate in self.gates]).mean(0)


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out")
p.add_argument("checkpoints", nargs="+")
p.add_argument("--change-margin", type=float, required=True)
args = p.parse_args()
refiner = Refiner.from_checkpoint(
    args.checkpoints[0], flip_tta=True, iterations=1, fallback_iou=0.5, min_area=1024, change_margin=args.change_margin
)
refiner.net.gate = MeanGate([load_refiner(c).gate.eval() for c in args.checkpoints]).eval()
rows = dev_table.score_inputs(refiner, dev_table.INPUTS, Path("../shared/data").resolve(), Path("work/dev_inputs"))
dev_table.print_table(rows)
Path(args.out).write_text(json.dumps({"checkpoints": args.checkpoints, "rows": rows}, default=str))
