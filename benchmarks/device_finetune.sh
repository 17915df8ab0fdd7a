#!/usr/bin/env bash
# One call on a lent GPU machine (session 18): do the bundled models gain from more training, started
# from their shipped weights (`python -m anomaly.train METHOD --init-from checkpoints/METHOD`)?
# Rebuilds the cohort's training splits there, then trains side by side on one GPU:
#   dae_ft      the shipped DAE (19.0k steps), its recipe continued (batch 32, lr 1e-3)
#   dae_ft_lo   the same at lr 3e-4 (Adam starts afresh: a lower rate keeps the restart gentle)
#   ae_ft       the shipped AE (12.8k steps), its recipe continued (batch 64, lr 1e-3): the DAE's
#               comparison stays fair only if the AE gets as much more
#   anoddpm_ft  the shipped diffusion model (3.6k steps), its recipe continued (batch 64, lr 2e-4)
# Each model is calibrated and validated there (card) and packed into $OUT; the choice is made on
# val_lesion afterwards, on this machine, with `python -m anomaly.evaluate`.
#   usage (device):  benchmarks/device_finetune.sh   locally: OUT=/tmp/o MIN=0.1 DEVICE=cpu BUILD=0 W=/tmp/w
set -u
cd "$(dirname "$0")/.."
export ANOMALY_THREADS=${ANOMALY_THREADS:-3}
MIN=${MIN:-6.8}
. benchmarks/device_common.sh
device_setup train val_normal val_lesion || exit 1

T="--data data/cohort --seed 0 --device $DEVICE --minutes $MIN"
train_packed dae_ft     dae     $T --init-from checkpoints/dae &
train_packed dae_ft_lo  dae     $T --init-from checkpoints/dae --lr 3e-4 &
train_packed ae_ft      ae      $T --init-from checkpoints/ae --batch-size 64 &
train_packed anoddpm_ft anoddpm $T --init-from checkpoints/anoddpm --batch-size 64 --lr 2e-4 &
wait
report_logs
