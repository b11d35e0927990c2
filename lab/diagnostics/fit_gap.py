"""Is a refiner limited by its capacity or by its data? Patch IoU on patches it trained on
against held-out patches of the same sets (other images), set by set.

A network short of capacity fits its training patches no better than held-out ones; one short
of data (or of signal in it) fits them clearly better. Same measure as the training log's
(``Trainer.evaluate_sets``, what ``bpr-train --eval-per-set`` logs: pixels over all patches,
and in the 2 px band around the target's boundary), with the refiner given as ``--init``; no
training step is taken.

    python lab/diagnostics/fit_gap.py CHECKPOINT [--patches 3000] [--sets work/c16_cs ...]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from bpr.modeling import load_refiner
from bpr.train.loop import TrainConfig, Trainer

SETS = [
    "work/c16_cs",
    "work/c16_cs_maskhead",
    "work/c16_cs_nearbu",
    "work/c16_davis",
    "work/c16_davis_u2net",
    "work/c16_davis_near",
    "work/c16_ecssd",
    "work/c16_ecssd_u2net",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--patches", type=int, default=3000, help="patches per set and split")
    p.add_argument("--sets", nargs="+", default=SETS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    config = load_refiner(args.checkpoint).config
    arch = config.arch
    print(f"{args.checkpoint} ({arch}); {args.patches} patches per set and split")
    print("| set | split | patches | coarse IoU | refined IoU | coarse band | refined band | band error fixed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cfg = TrainConfig(
        patches=args.sets,
        arch=arch,
        init_checkpoint=args.checkpoint,
        patch_centres=config.context == 0,  # a refiner without context sees the patch inside each view
        detail_head=config.detail_head,
        input_size=config.input_size,
        eval_per_set=args.patches,
        amp=False,
        augment=False,
        threads=args.threads,
    )
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        rows = Trainer(cfg, out).evaluate_sets()  # the training log's heldout_sets.csv, once
    rows.sort(key=lambda r: (args.sets.index(r["set"]), r["split"] != "train"))
    for r in rows:
        fixed = (r["val_band_iou"] - r["coarse_band_iou"]) / max(1 - r["coarse_band_iou"], 1e-9)
        split = "held-out" if r["split"] == "val" else "train"
        print(
            f"| {r['set']} | {split} | {r['patches']} | {r['coarse_iou']:.4f} | {r['val_iou']:.4f} | "
            f"{r['coarse_band_iou']:.4f} | {r['val_band_iou']:.4f} | {100 * fixed:.1f}% |"
        )


if __name__ == "__main__":
    main()
