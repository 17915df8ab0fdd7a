#!/usr/bin/env bash
# One call on a lent GPU machine (session 8): does a larger DDAD refiner (ASR head) help? Rebuilds
# the cohort's training splits there, then trains side by side, on the frozen ensembles of the
# shipped DDAD (checkpoints/ddad) and of the held-out-anatomy DDAD (runs/loo_v2/ddad, carried):
#   main_base  the paper-size refiner (channels 16,32,64,128), as a same-budget control
#   main_wide  channels 32,64,128,256 (4x the weights)
#   main_deep  channels 16,32,64,128,256 (one more level: 8x8 bottleneck, more context)
#   loo_wide, loo_deep  the same on train_loo (no Colin27), calibrated on val_normal_loo
# Each is re-calibrated and validated there (val_lesion figures in its card) and packed into $OUT.
# The choice is made on val_lesion afterwards, on this machine.
#   usage (device):  benchmarks/device_asr.sh      locally: OUT=/tmp/o MIN=0.2 DEVICE=cpu BUILD=0 W=/tmp/w
set -u
cd "$(dirname "$0")/.."
export ANOMALY_THREADS=${ANOMALY_THREADS:-1}
MIN=${MIN:-6}
WORKERS=${WORKERS:-2}
BS=${BS:-32}
LOO=${LOO:-runs/loo_v2/ddad}
. benchmarks/device_common.sh
device_setup train val_normal val_lesion unlabeled train_loo val_normal_loo || exit 1
[ -f "$LOO/card.json" ] || { echo "no LOO DDAD at $LOO"; exit 1; }

run() {  # run NAME CHECKPOINT CHANNELS [split args...]
  local n=$1 ck=$2 ch=$3; shift 3
  $PY -m anomaly.methods.ddad.asr --checkpoint "$ck" --data data/cohort --out "$W/$n" --minutes "$MIN" \
      --batch-size "$BS" --device "$DEVICE" --workers "$WORKERS" --channels "$ch" "$@" > "$W/$n.log" 2>&1
  echo "$n rc=$?"; pack "$n" "$W/$n"
}
L="--train-split train_loo --val-split val_normal_loo"
run main_base checkpoints/ddad 16,32,64,128 &
run main_wide checkpoints/ddad 32,64,128,256 &
run main_deep checkpoints/ddad 16,32,64,128,256 &
run loo_wide "$LOO" 32,64,128,256 $L &
run loo_deep "$LOO" 16,32,64,128,256 $L &
wait
report_logs
