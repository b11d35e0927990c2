#!/usr/bin/env python
"""Data the dev table does not hold: U2-Net-p's predictions (real network errors;
``python scripts/salient_predictions.py ../shared/data/ecssd-train work/u2netp_ecssd.json``, likewise
davis-train, as scripts/train_effl0.sh does) on the held-out images of the salient training sets, which no refiner
trained on, refined by each checkpoint at its own settings: J, F and the share of frames worse by
more than 1 IoU point. Session 14: does ``ungated_shift`` hold up beyond the dev inputs it was
chosen on?

    python lab/diagnostics/u2net_probe.py 0.05 work/s14/default_prev.pt bpr/models/bpr_default.pt
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bpr.evaluate.dev_table import refine_file, score
from bpr.io.coco import load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.refiner import Refiner
from bpr.train.build_patches import is_held_out

PREDICTIONS = {"ecssd-train": Path("work/u2netp_ecssd.json"), "davis-train": Path("work/u2netp_davis.json")}


def main() -> None:
    fraction, checkpoints = float(sys.argv[1]), sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, predictions in PREDICTIONS.items():
            root = shared_data_root() / name
            gt = load_json(root / "gt.json")
            keep = {i["id"] for i in gt["images"] if is_held_out(i["file_name"], fraction)}
            images = [i for i in gt["images"] if i["id"] in keep]
            annotations = [a for a in gt["annotations"] if a["image_id"] in keep]
            write_json_atomic(tmp / "gt.json", {**gt, "images": images, "annotations": annotations})
            write_json_atomic(tmp / "coarse.json", [p for p in load_json(predictions) if p["image_id"] in keep])
            for checkpoint in checkpoints:
                refiner = Refiner.from_checkpoint(checkpoint)
                refine_file(refiner, tmp / "gt.json", root / "images", tmp / "coarse.json", tmp / "out.json")
                row = score(tmp / "gt.json", tmp / "coarse.json", tmp / "out.json")
                j, f = (f"{row[k][0] * 100:.2f} -> {row[k][1] * 100:.2f}" for k in ("J", "F"))
                print(
                    f"{name}: {len(keep)} held-out images, {checkpoint}: {refiner.stats.ungated} instances ungated, "
                    f"J {j}, F {f}, worse {row['worse'] * 100:.1f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
