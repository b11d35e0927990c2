#!/usr/bin/env bash
# Reproduce the bundled default model, bpr/models/bpr_default.pt (see models/MODEL_CARD.md).
#
#   bash scripts/train_default_model.sh             # the default since session 19 (stage 7 below)
#   PREVIOUS=1 bash scripts/train_default_model.sh  # instead, stages 1-6: the default of sessions 10-18,
#                                                   # into work/default_prev.pt (any non-empty value)
#
# Run it again after an interruption and it resumes.
#
# Stage 7 (2026-12-06, session 19), the default: one refiner, stage 6's companion after 1,500
# steps with quarter turns (lab/configs/s18_effl0_quarter_turns.json; its weights:
# lab/runs/s18_qt/model.pt, or REFINER=<file>), with its own patch-quality gate trained on its
# frozen output over the held-out images of the context sets (scripts/build_context_sets.sh),
# packaged with the settings chosen on the whole dev table.
#
# Stages 1-6 built the previous default (the HRNet with its gate and a companion):
# Stage 1: synthetic coarse masks on davis-train + ecssd-train from the default recipe mix
# (6 draws per instance), boundary patches at NMS 0.25, 12,000 steps from scratch with
# lab/configs/default_hr18s_64.json.
# Stage 2: the "large" mix (half the default recipes, half errors beyond 8 px: missed thin
# parts, large warps and colour leaks, low-resolution masks, bitten / swallowed chunks),
# 5,000 fine-tuning steps from stage 1 with a full-resolution detail head
# (lab/configs/finetune_large_p64_detail.json).
# Stage 3: street scenes. Patches of every cityscapes-train instance with the "scene" mix
# (Mask R-CNN-like blobs, nearly right masks, stride 4-8 bottom-up masks, touching
# neighbours, warps; 2 draws) beside the salient sets with the "salient" mix; 1,500
# fine-tuning steps from stage 2 (lab/configs/finetune_scene_p64_1500.json).
# Stage 4: the patch-quality gate, 800 steps on the frozen stage-3 refiner over the
# Cityscapes patches (scripts/train_gate.py), then packaging with the inference settings
# chosen on the whole dev table (models/MODEL_CARD.md): the default until 2026-12-05, kept as
# lab/runs/hr18s_default/model.pt.
# Stage 5 (2026-12-05): a companion. The context-16 effl0 refiner of the issue-21 campaign
# (scripts/train_effl0.sh, scripts/build_context_sets.sh, then bpr-train
# lab/configs/effl0_ft_ctx16.json; its weights: lab/runs/effl0_ft_ctx16/model.pt, or
# COMPANION=<file>) is shipped inside the stage-4 checkpoint: its probability (weight 0.4) is
# averaged into the HRNet's (0.6), one pass each, and the stage-4 gate judges the average;
# patches that gate rejects by more than 0.5 logits on the HRNet alone skip the companion.
# Stage 6 (2026-12-06, session 16): that companion fine-tuned 1,500 more steps (48,000 samples,
# bf16 autocast) on session 13's 27 context sets plus a street-scene set whose coarse masks are a
# real network's: a Mask R-CNN-style mask head trained on one half of cityscapes-train predicts
# the other half (lab/maskhead/run.sh, then bpr-train lab/configs/s16_effl0_ctx16_maskhead.json;
# its weights: lab/runs/s16_effl0_ctx16_maskhead/model.pt). Packaged with the instance rule's
# margins: an instance given its ungated answer loses foreground pixels beyond 0.5 +- 0.1 and
# keeps its parts narrower than 9 px (--ungated-removal-margin 0.1 --ungated-keep-thin 4).
# Every run saves last.pt every 250 steps and continues from it with the same batches.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BPR_SHARED_DATA:-../shared/data}
if [ -z "${PREVIOUS:-}" ]; then
  bash scripts/build_context_sets.sh
  sets=(work/c16_cs work/c16_davis work/c16_ecssd work/c16_cs_nearbu work/c16_davis_near work/c16_ecssd_near
    work/c16_davis_nlr work/c16_ecssd_nlr work/c16_cs_nlr work/c16_davis_u2net work/c16_ecssd_u2net
    work/c16_cs_maskhead work/g16_cs work/g16_cs_near work/g16_cs_nlr work/g16_davis work/g16_davis_near
    work/g16_davis_nlr work/g16_ecssd work/g16_ecssd_near work/g16_ecssd_nlr)
  [ -f work/s19/qt_gate.pt ] || bpr-train-gate "${REFINER:-lab/runs/s18_qt/model.pt}" --patches "${sets[@]}" \
    --held-out --steps 4000 --eval-every 1000 --eval-patches 40000 --gate-width 32 --harm-weight 4 \
    --stake-power 0.5 --change-margin 0.2 --threads 2 --out work/s19/qt_gate.pt
  bpr-package work/s19/qt_gate.pt bpr/models/bpr_default.pt --no-flip-tta --iterations 1 --fallback-iou 0.5 \
    --min-area 1024 --change-margin 0.2 --keep-thin 4 --ungated-shift 0.6 --ungated-removal-margin 0.1
  bpr-dev-table --checkpoint bpr/models/bpr_default.pt --json lab/runs/dev_table_default.json \
    --extra-input cs-maskhead=lab/runs/maskhead/cs_dev_maskhead_fold0.json
  exit 0
fi
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
train lab/configs/default_hr18s_64.json work/runs/default_12k
cp work/runs/default_12k/model.pt work/bpr_default_12k.pt  # stage 2's init_checkpoint
train lab/configs/finetune_large_p64_detail.json work/runs/large_p64_detail
python scripts/package_model.py work/runs/large_p64_detail/model.pt work/bpr_stage2.pt --flip-tta --iterations 2
if [ ! -f work/p_cs/manifest.json ]; then
  bpr-build-patches --gt "$DATA/cityscapes-train/gt.json" --images "$DATA/cityscapes-train/images" \
    --out work/p_cs --draws 2 --mix scene --seed 1 --workers 2
fi
[ -f work/p_davis/manifest.json ] || bpr-build-patches --gt "$DATA/davis-train/gt.json" \
  --images "$DATA/davis-train/images" --out work/p_davis --draws 4 --mix salient --seed 2 --workers 2
[ -f work/p_ecssd/manifest.json ] || bpr-build-patches --gt "$DATA/ecssd-train/gt.json" \
  --images "$DATA/ecssd-train/images" --out work/p_ecssd --draws 3 --mix salient --seed 3 --workers 2
if [ -f work/runs/scene1500/last.pt ]; then
  bpr-train --out work/runs/scene1500 --resume
else
  bpr-train lab/configs/finetune_scene_p64_1500.json --init work/bpr_stage2.pt --out work/runs/scene1500
fi
[ -f work/gate/cs_m20_h2.pt ] || python scripts/train_gate.py work/runs/scene1500/model.pt --patches work/p_cs \
  --out work/gate/cs_m20_h2.pt --steps 800 --batch-size 64 --flip-tta --change-margin 0.2 --harm-weight 2
python scripts/package_model.py work/gate/cs_m20_h2.pt work/hr18s_default.pt --flip-tta --iterations 1 \
  --fallback-iou 0.5 --min-area 1024 --change-margin 0.2 --gate-threshold 1.5
python scripts/package_model.py work/hr18s_default.pt work/default_prev.pt \
  --companion "${COMPANION:-lab/runs/s16_effl0_ctx16_maskhead/model.pt}" --companion-weight 0.4 --no-flip-tta \
  --iterations 1 --fallback-iou 0.5 --min-area 1024 --change-margin 0.2 --gate-early-reject 0.5 --ungated-shift 0.6 \
  --ungated-removal-margin 0.1 --ungated-keep-thin 4
python scripts/dev_table.py --checkpoint work/default_prev.pt --json work/dev_table_default_prev.json
