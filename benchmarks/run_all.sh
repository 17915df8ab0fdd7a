#!/usr/bin/env bash
# Reproduces the README's benchmark tables (after `make data` and the trainings in the cards).
#   main test:            data/cohort/test, every single-pass method, then diffusion (on demand in the app)
#   held-out anatomy:     data/cohort/test_heldout with models trained on train_loo (benchmarks/train_loo.sh)
#   held-out context:     the main models (which saw Colin27) on data/cohort/test_heldout
#   domain shift:         data/cohort/test_domain_shift (the real ITK subject), main models
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/benchmark}
# is data/cohort/test the split the README's figures were measured on? (a rebuild may differ: README)
$PY -m anomaly.data verify --data data/cohort || true
SINGLE=$($PY -c "from anomaly.methods.base import available_methods, method_class; print(','.join(m for m in available_methods() if not method_class(m).on_demand))")
$PY -m anomaly.evaluate --data data/cohort/test --methods "$SINGLE" --out "$OUT/test" --no-progress
if [ -f checkpoints/anoddpm/card.json ]; then
  $PY -m anomaly.evaluate --data data/cohort/test --methods anoddpm,ae --out "$OUT/test_anoddpm" --no-progress
fi
# held-out anatomy: the full leave-Colin27-out set of benchmarks/train_loo.sh (runs/loo) when it exists,
# else the committed zscore + feature refits (checkpoints/loo); the on-demand diffusion model on its own
LOO_ROOT=${LOO_ROOT:-$( [ -d runs/loo ] && echo runs/loo || echo checkpoints/loo )}
LOO=$($PY -c "from pathlib import Path; from anomaly.methods.base import available_methods, method_class; print(','.join(m for m in available_methods(Path('$LOO_ROOT')) if not method_class(m).on_demand))")
if [ -n "$LOO" ]; then
  $PY -m anomaly.evaluate --data data/cohort/test_heldout --methods "$LOO" --checkpoints "$LOO_ROOT" --out "$OUT/heldout" --no-progress
fi
if [ -f "$LOO_ROOT/anoddpm/card.json" ]; then
  $PY -m anomaly.evaluate --data data/cohort/test_heldout --methods "anoddpm$( [ -f "$LOO_ROOT/ae/card.json" ] && echo ,ae )" --checkpoints "$LOO_ROOT" --out "$OUT/heldout_anoddpm" --no-progress
fi
# context for the held-out rows (not a held-out figure): the main models, which saw Colin27, on the same slices
$PY -m anomaly.evaluate --data data/cohort/test_heldout --methods "$SINGLE$( [ -f checkpoints/anoddpm/card.json ] && echo ,anoddpm )" --out "$OUT/heldout_main_models" --no-progress
$PY -m anomaly.evaluate --data data/cohort/test_domain_shift --methods "$SINGLE" --out "$OUT/domain_shift" --no-progress
if [ -f checkpoints/anoddpm/card.json ]; then
  $PY -m anomaly.evaluate --data data/cohort/test_domain_shift --methods anoddpm --out "$OUT/domain_shift_anoddpm" --no-progress
fi
