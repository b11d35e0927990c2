#!/usr/bin/env bash
# The effl0 campaign's patch sets rebuilt with 16 px of context around every patch (issue 21,
# session 8; lab/configs/effl0_ft_ctx16.json trains on them). Same recipes and seeds as
# scripts/train_effl0.sh, plus session 7's nearly right / bottom-up street-scene draws.
# About 13 minutes and 14 GB on the 2-core machine; sets already built are kept. Then, for the
# gate (session 9): more draws of the held-out images only (about 1 minute, 3 GB).
#
#   bash scripts/build_context_sets.sh
#   bpr-train lab/configs/effl0_ft_ctx16.json --out work/runs/effl0_ft_ctx16
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BPR_SHARED_DATA:-../shared/data}
patches() {  # patches <set> <out> <flags...>: build once
  local set=$1 out=$2
  shift 2
  [ -f "$out/manifest.json" ] || bpr-build-patches --gt "$DATA/$set/gt.json" --images "$DATA/$set/images" \
    --out "$out" --workers 2 --quiet --context 16 "$@"
}
for set in davis ecssd; do
  [ -f "work/u2netp_$set.json" ] || python scripts/salient_predictions.py "$DATA/$set-train" "work/u2netp_$set.json"
done
patches cityscapes-train work/c16_cs --draws 2 --mix scene --seed 1
patches davis-train work/c16_davis --draws 4 --mix salient --seed 2
patches ecssd-train work/c16_ecssd --draws 3 --mix salient --seed 3
patches davis-train work/c16_davis_u2net --coarse work/u2netp_davis.json --draws 0 --seed 4
patches ecssd-train work/c16_ecssd_u2net --coarse work/u2netp_ecssd.json --draws 0 --seed 5
patches davis-train work/c16_davis_near --draws 2 --mix near=1 --seed 7
patches ecssd-train work/c16_ecssd_near --draws 1 --mix near=1 --seed 8
patches cityscapes-train work/c16_cs_nearbu --draws 2 --mix near=0.6,stride=0.4 --seed 31
# session 13: ground truth through 1/1.5-1/3 resolution (thin parts thinned or dashed), for
# lab/configs/effl0_ft_ctx16_nlr.json and hr18s_ft_nlr.json (the 0.7-scale davis-train images come
# from lab/diagnostics/near_harm_probe.py, see the model card's session 11)
patches davis-train work/c16_davis_nlr --draws 4 --mix near_lowres=1 --seed 51
patches ecssd-train work/c16_ecssd_nlr --draws 2 --mix near_lowres=1 --seed 52
patches cityscapes-train work/c16_cs_nlr --draws 1 --mix near_lowres=1 --seed 53
# session 16: a real mask head's held-out predictions on cityscapes-train (lab/maskhead/run.sh
# trains the heads anew; their predictions are committed)
if [ ! -f work/c16_cs_maskhead/manifest.json ]; then
  mkdir -p work/maskhead
  [ -f work/maskhead/pred_train.json ] || gunzip -c lab/runs/maskhead/cs_train_maskhead_heldout.json.gz \
    >work/maskhead/pred_train.json
  patches cityscapes-train work/c16_cs_maskhead --coarse work/maskhead/pred_train.json --draws 0 --seed 61
fi
if [ -f work/s11/rescaled/davis-train_x0.7_every1/gt.json ] && [ ! -f work/c16_davis_x07_nlr/manifest.json ]; then
  bpr-build-patches --gt work/s11/rescaled/davis-train_x0.7_every1/gt.json \
    --images work/s11/rescaled/davis-train_x0.7_every1/images --out work/c16_davis_x07_nlr --workers 2 --quiet \
    --context 16 --draws 2 --mix near_lowres=1 --seed 54
fi
# the gate's sets: new draws (other seeds) of the images the refiner never trained on
patches cityscapes-train work/g16_cs --held-out-only --draws 6 --mix scene --seed 101
patches cityscapes-train work/g16_cs_near --held-out-only --draws 4 --mix near=0.6,stride=0.4 --seed 102
patches davis-train work/g16_davis --held-out-only --draws 8 --mix salient --seed 103
patches davis-train work/g16_davis_near --held-out-only --draws 8 --mix near=1 --seed 104
patches ecssd-train work/g16_ecssd --held-out-only --draws 6 --mix salient --seed 105
patches ecssd-train work/g16_ecssd_near --held-out-only --draws 6 --mix near=1 --seed 106
patches davis-train work/g16_davis_nlr --held-out-only --draws 8 --mix near_lowres=1 --seed 201
patches ecssd-train work/g16_ecssd_nlr --held-out-only --draws 6 --mix near_lowres=1 --seed 202
patches cityscapes-train work/g16_cs_nlr --held-out-only --draws 4 --mix near_lowres=1 --seed 203
