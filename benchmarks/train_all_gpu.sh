#!/usr/bin/env bash
# How the bundled checkpoints of the six learned methods were trained (one lent NVIDIA H200, all six
# in parallel, 2 CPU threads each for the data pipeline; see `trained_on`/`command` in each card).
# On a CPU-only machine the same commands run with `--device cpu` (far fewer steps in the same time).
#   usage: benchmarks/train_all_gpu.sh [MINUTES]   (needs data/cohort: `make data`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MIN=${1:-7}
export ANOMALY_THREADS=${ANOMALY_THREADS:-2}
mkdir -p runs/train
declare -A ARGS=(
  [ae]="--batch-size 64"
  [vae]="--batch-size 64"
  [dae]="--batch-size 32"
  [ddad]="--batch-size 32 --lr 2e-3"
  [fanogan]="--batch-size 64"
  [anoddpm]="--batch-size 64 --lr 2e-4"
)
for m in "${!ARGS[@]}"; do
  $PY -m anomaly.train "$m" --data data/cohort --seed 0 --minutes "$MIN" --device auto ${ARGS[$m]} > "runs/train/$m.log" 2>&1 &
done
wait
# ddad and anoddpm were then resumed for 4 more minutes: --minutes $((MIN + 4)) --resume (same arguments)
# after that, with the final val_lesion split: every method re-calibrated with --calibrate-only
for m in zscore ae vae dae ddad fanogan feature anoddpm consensus; do
  $PY -m anomaly.train "$m" --data data/cohort --calibrate-only
done
