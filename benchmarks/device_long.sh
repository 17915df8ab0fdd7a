#!/usr/bin/env bash
# One call on a lent GPU machine (session 17): do the DAE and the AE gain from more training data per
# run? Rebuilds the cohort's training splits there, then trains side by side on one H100:
#   dae_long   the shipped DAE's recipe (batch 32), 7 minutes alone instead of 5.5 shared with five jobs
#   dae_b128   the same DAE with batch 128 (4x the slices per step)
#   ae_b128    the plain AE with batch 128, so that the AE gets as much more as the DAE
# Each model is calibrated and validated there (card) and packed into $OUT; the choice is made on
# val_lesion afterwards, on this machine, with `python -m anomaly.evaluate`.
#   usage (device):  benchmarks/device_long.sh      locally: OUT=/tmp/o MIN=0.1 DEVICE=cpu BUILD=0 W=/tmp/w
set -u
cd "$(dirname "$0")/.."
export ANOMALY_THREADS=${ANOMALY_THREADS:-4}
MIN=${MIN:-7}
. benchmarks/device_common.sh
device_setup train val_normal val_lesion || exit 1
ls data/cohort/train/images | head -2 | while read f; do md5sum "data/cohort/train/images/$f"; done

T="--data data/cohort --seed 0 --device $DEVICE --minutes $MIN"
train_packed dae_long dae $T &
train_packed dae_b128 dae $T --batch-size 128 &
train_packed ae_b128  ae  $T --batch-size 128 &
wait
report_logs
