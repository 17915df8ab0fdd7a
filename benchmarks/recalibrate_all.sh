#!/usr/bin/env bash
# Session 11: re-calibrate every shipped checkpoint and every held-out-anatomy model on the brain
# extractor's masks (the masks the app and `evaluate` use; calibration had used the cohort's
# ground-truth brain masks). Weights are kept (--calibrate-only); the consensus last, since it
# combines its members' calibrated maps. Then benchmarks/run_all.sh for the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=.
LOO_ROOT=${LOO_ROOT:-runs/loo_v2}
NOTE="session 11: re-calibrated with --calibrate-only on the brain extractor's masks (before: the cohort's ground-truth brain masks)"
note() {  # append NOTE to the card's calibration_note
  $PY - "$1" "$NOTE" <<'PYEOF'
import sys
from anomaly.checkpoints import load_card, write_card
c = load_card(sys.argv[1])
old = c.get("calibration_note", "")
c["calibration_note"] = (old + "; " if old else "") + sys.argv[2]
write_card(sys.argv[1], c)
PYEOF
}
for m in zscore ae vae dae fanogan feature ddad anoddpm consensus; do
  $PY -m anomaly.train $m --data data/cohort --calibrate-only --seed 0
  note checkpoints/$m
done
if [ -d "$LOO_ROOT" ]; then
  for m in zscore ae vae dae fanogan feature ddad anoddpm consensus; do
    [ -f "$LOO_ROOT/$m/card.json" ] || continue
    $PY -m anomaly.train $m --data data/cohort --train-split train_loo --val-split val_normal_loo --seed 0 \
        --out "$LOO_ROOT/$m" --calibrate-only
    note "$LOO_ROOT/$m"
  done
fi
