"""One extra dev-table row: a refiner on cityscapes-dev coarse masks from any results file (here the
mask head's, lab/maskhead/mask_head.py), refined and scored exactly as bpr-dev-table does.

    python lab/maskhead/score_input.py --coarse work/maskhead/pred_dev_fold0.json \
        --checkpoint bpr/models/bpr_default.pt --json lab/runs/maskhead/cs_maskhead_default.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bpr.cli.common import add_option_flags
from bpr.evaluate import dev_table
from bpr.io.coco import write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.options import option_infos
from bpr.refiner import Refiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", type=Path, required=True)
    parser.add_argument("--name", default="cs-maskhead")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--json", type=Path)
    add_option_flags(parser)
    args = parser.parse_args()
    refiner = Refiner.from_checkpoint(args.checkpoint, **{name: getattr(args, name) for name in option_infos()})
    root = shared_data_root() / "cityscapes-dev"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "refined.json"
        run = dev_table.refine_file(refiner, root / "gt.json", root / "images", args.coarse, out)
        rows = {args.name: {**dev_table.score(root / "gt.json", args.coarse, out), "run": run}}
    print(f"checkpoint {refiner.checkpoint}; {refiner.backend} backend, {refiner.precision}; {refiner.options}\n")
    dev_table.print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, {**dev_table.report(refiner, rows), "coarse": str(args.coarse)})
        print(json.dumps({k: rows[args.name][k] for k in ("AP", "bAP", "AP_S", "AP_M", "AP_L", "bAP_L", "worse")}))


if __name__ == "__main__":
    main()
