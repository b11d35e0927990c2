#!/usr/bin/env bash
# The quarter-turn companion, continued (issue 21, from session 19): the default's refiner
# (lab/runs/s18_qt/model.pt: the context-16 effl0, 1,500 steps with quarter turns) trained
# 3,000 more steps of batch 32 (96,000 samples) with quarter turns on the same context-16 sets,
# AdamW 1.5e-4 -> 1e-5, each set's training and held-out fit logged every 500 steps
# (lab/configs/s19_effl0_qt_continue.json). Resumable across sessions:
#
#   bash scripts/train_qt.sh [MINUTES]   # builds what is missing, then trains MINUTES (default 60)
#
# THREADS=1 while other heavy work runs. On a machine where work/ is gone, the run restarts from
# the committed weights of its last stop (lab/runs/s19_qt_continue/model.pt, --init with its step:
# the optimiser state is lost, the weights are not).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-60}
THREADS=${THREADS:-2}
CONFIG=lab/configs/s19_effl0_qt_continue.json
RUN=work/runs/s19_qt_continue
COMMITTED=lab/runs/s19_qt_continue/model.pt
bash scripts/build_context_sets.sh
THREADS="$THREADS" bash scripts/continue_run.sh "$CONFIG" "$RUN" "$COMMITTED" "$MINUTES"
