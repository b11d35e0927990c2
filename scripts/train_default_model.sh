#!/usr/bin/env bash
# Reproduce the bundled default model, models/bpr_default.pt (see models/MODEL_CARD.md).
#
#   bash scripts/train_default_model.sh   # builds patches (once), trains both stages; run it
#                                         # again after an interruption and it resumes
#
# Stage 1: synthetic coarse masks on davis-train + ecssd-train from the default recipe mix
# (6 draws per instance), boundary patches at NMS 0.25, 12,000 steps from scratch with
# models/configs/default_hr18s_64.json.
# Stage 2: the "large" mix (half the default recipes, half errors beyond 8 px: missed thin
# parts, large warps and colour leaks, low-resolution masks, bitten / swallowed chunks),
# 5,000 fine-tuning steps from stage 1 with a full-resolution detail head
# (models/configs/finetune_large_p64_detail.json).
# Both runs save last.pt every 250 steps and continue from it with the same batches.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BPR_SHARED_DATA:-../shared/data}
build() {  # build <set> <out> <extra bpr-build-patches flags...>
  local set=$1 out=$2
  shift 2
  if [ ! -f "$out/manifest.json" ]; then
    bpr-build-patches --gt "$DATA/${set}-train/gt.json" --images "$DATA/${set}-train/images" \
      --out "$out" --draws 6 --workers 2 "$@"
  fi
}
for set in davis ecssd; do
  build $set work/patches/${set}-d6 --seed 0
  build $set work/patches/${set}-large-p64 --seed 1 --mix large
done
train() {  # train <config> <run dir>: start it, or continue it from its last.pt
  if [ -f "$2/last.pt" ]; then
    bpr-train --out "$2" --resume  # a finished run only re-exports its model.pt
  else
    bpr-train "$1" --out "$2"
  fi
}
train models/configs/default_hr18s_64.json work/runs/default_12k
cp work/runs/default_12k/model.pt work/bpr_default_12k.pt  # stage 2's init_checkpoint
train models/configs/finetune_large_p64_detail.json work/runs/large_p64_detail
python scripts/package_model.py work/runs/large_p64_detail/model.pt models/bpr_default.pt --flip-tta --iterations 2
python scripts/evaluate_refiner.py --checkpoint models/bpr_default.pt --nms 0.25 0.55 --json models/bpr_default.eval.json
