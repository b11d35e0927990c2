#!/usr/bin/env bash
# Reproduce the bundled default model, models/bpr_default.pt (see models/MODEL_CARD.md).
#
#   bash scripts/train_default_model.sh            # build patches (once), then train
#   bash scripts/train_default_model.sh --resume   # continue an interrupted run
#
# Steps: synthetic coarse masks on davis-train + ecssd-train (6 draws per instance, the
# default recipe mix), boundary patches at NMS 0.25, then bpr-train with
# models/configs/default_hr18s_64.json. The run is resumable: every 250 steps it saves
# work/runs/default/last.pt, and --resume continues from it with the same batches.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BPR_SHARED_DATA:-../shared/data}
for set in davis ecssd; do
  out=work/patches/${set}-d6
  if [ ! -f "$out/manifest.json" ]; then
    bpr-build-patches --gt "$DATA/${set}-train/gt.json" --images "$DATA/${set}-train/images" \
      --out "$out" --draws 6 --seed 0 --workers 2
  fi
done
if [ "${1:-}" = "--resume" ]; then
  bpr-train --out work/runs/default --resume
else
  bpr-train models/configs/default_hr18s_64.json --out work/runs/default
fi
python scripts/package_model.py work/runs/default/model.pt models/bpr_default.pt --flip-tta
python scripts/evaluate_refiner.py --checkpoint models/bpr_default.pt --nms 0.25 0.55 --json models/bpr_default.eval.json
