#!/usr/bin/env python
"""Where does "nearly right" end? The ground truth of cityscapes-dev and davis-dev-real through
1/``factor`` of the resolution and back (factor 2 is the dev table's ``*-near`` inputs; 3 and 4
are rougher, the boundary off by a pixel or two), refined by each checkpoint at its own settings:
how many instances ``ungated_shift`` picks, and whether the numbers move. Session 14.

    python lab/diagnostics/resolution_probe.py 3 work/s14/default_prev.pt bpr/models/bpr_default.pt
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bpr.evaluate.dev_table import refine_file, score
from bpr.io.coco import decode_segmentation, load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.results import refined_entry
from bpr.refiner import Refiner
from bpr.train.synth import through_resolution


def main() -> None:
    factor, checkpoints = float(sys.argv[1]), sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in ("cityscapes-dev", "davis-dev-real"):
            root = shared_data_root() / name
            gt = load_json(root / "gt.json")
            sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
            coarse = []
            for a in gt["annotations"]:
                if a.get("iscrowd"):
                    continue
                m = through_resolution(decode_segmentation(a["segmentation"], *sizes[a["image_id"]]), factor) > 0.5
                if m.any():
                    coarse.append(
                        refined_entry({"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}, m)
                    )
            write_json_atomic(tmp / "coarse.json", coarse)
            for checkpoint in checkpoints:
                refiner = Refiner.from_checkpoint(checkpoint)
                refine_file(refiner, root / "gt.json", root / "images", tmp / "coarse.json", tmp / "out.json")
                row = score(root / "gt.json", tmp / "coarse.json", tmp / "out.json")
                keys = ("J", "F") if row["single"] else ("AP", "bAP", "J", "F")
                cells = ", ".join(f"{k} {row[k][0] * 100:.2f} -> {row[k][1] * 100:.2f}" for k in keys)
                print(
                    f"{name} through 1/{factor:g}: {len(coarse)} instances, {checkpoint}: {refiner.stats.ungated} "
                    f"ungated; {cells}, worse {row['worse'] * 100:.1f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
