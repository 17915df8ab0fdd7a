#!/usr/bin/env bash
# One call on a lent GPU machine (session 7): rebuild the cohort's training splits there, then in
# parallel retrain the held-out-anatomy (LOO) models of every learned method on train_loo (no
# Colin27) with the recipe of the bundled ones (GPU minutes, calibrated on val_normal_loo), and one
# longer GPU run of the main DAE (compared with the shipped one on val_lesion before any adoption).
# Each finished model folder is packed into $OUT as soon as it is done, so a run cut short still
# returns what finished. Locally: `OUT=/tmp/out MIN=0.3 DEVICE=cpu BUILD=0 benchmarks/device_loo.sh`.
#   usage (device):  benchmarks/device_loo.sh       (wheels of monai/nibabel/pydicom in .whl/)
set -u
cd "$(dirname "$0")/.."
export ANOMALY_THREADS=${ANOMALY_THREADS:-2}
MIN=${MIN:-5}            # minutes per single-stage model
ENS=${ENS:-2}            # DDAD ensembles (both), then ASR for ASR minutes
ASR=${ASR:-3}
. benchmarks/device_common.sh
device_setup train val_normal val_lesion unlabeled train_loo val_normal_loo || exit 1
# identity of the data built here (compare with the local build)
ls data/cohort/train_loo/images | head -2 | while read f; do md5sum "data/cohort/train_loo/images/$f"; done

T="--data data/cohort --seed 0 --device $DEVICE"
L="$T --train-split train_loo --val-split val_normal_loo"
run() {  # run NAME DIR ARGS...: train one method into DIR, then pack it
  local n=$1 d=$2; shift 2
  $PY -m anomaly.train "$@" --out "$d" > "$W/$n.log" 2>&1; echo "$n rc=$?"; pack "$n" "$d"
}
run loo_ae      $W/loo/ae      ae      $L --minutes "$MIN" --batch-size 64 &
run loo_vae     $W/loo/vae     vae     $L --minutes "$MIN" --batch-size 64 &
run loo_fanogan $W/loo/fanogan fanogan $L --minutes "$MIN" --batch-size 64 &
run loo_dae     $W/loo/dae     dae     $L --minutes "$MIN" &
run dae_gpu     $W/dae_gpu     dae     $T --minutes "$MIN" &
( ANOMALY_DDAD_ASR_SHARE=0 $PY -m anomaly.train ddad $L --minutes "$ENS" --batch-size 32 --lr 2e-3 \
      --out $W/loo/ddad > "$W/loo_ddad.log" 2>&1; echo "loo_ddad ensembles rc=$?"
  $PY -m anomaly.methods.ddad.asr --checkpoint $W/loo/ddad --data data/cohort --train-split train_loo \
      --val-split val_normal_loo --minutes "$ASR" --device "$DEVICE" > "$W/loo_ddad_asr.log" 2>&1
  echo "loo_ddad asr rc=$?"; pack loo_ddad $W/loo/ddad ) &
wait
report_logs
