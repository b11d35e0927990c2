#!/usr/bin/env bash
# One resumable leg of a long bpr-train run, for the campaign scripts (train_effl2.sh,
# train_qt.sh): continue RUN from its last.pt; where work/ is gone, start again from the weights
# committed at the run's last stop (COMMITTED, --init with its step: the optimiser state is lost,
# the weights are not); else start CONFIG afresh. Trains MINUTES, then stops cleanly.
#
#   bash scripts/continue_run.sh CONFIG RUN COMMITTED MINUTES   # THREADS=1 beside other heavy work
set -euo pipefail
CONFIG=$1 RUN=$2 COMMITTED=$3 MINUTES=$4
run=(--out "$RUN" --threads "${THREADS:-2}" --max-minutes "$MINUTES")
if [ -f "$RUN/last.pt" ]; then
  bpr-train "$CONFIG" --resume "${run[@]}"
elif [ -f "$COMMITTED" ]; then
  step=$(python -c "import torch; print(torch.load('$COMMITTED', weights_only=True)['meta']['step'])")
  bpr-train "$CONFIG" --init "$COMMITTED" --init-step "$step" "${run[@]}"
else
  bpr-train "$CONFIG" "${run[@]}"
fi
