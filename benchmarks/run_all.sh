#!/usr/bin/env bash
# Reproduces the README's benchmark tables (after `make data` and the trainings in the cards).
#   main test:            data/cohort/test, every single-pass method (+ diffusion on a stated subset)
#   held-out anatomy:     data/cohort/test_heldout with models trained on train_loo (checkpoints/loo)
#   domain shift:         data/cohort/test_domain_shift (the real ITK subject), main models
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/benchmark}
SINGLE=$($PY -c "from anomaly.methods.base import available_methods, method_class; print(','.join(m for m in available_methods() if not method_class(m).on_demand))")
$PY -m anomaly.evaluate --data data/cohort/test --methods "$SINGLE" --out "$OUT/test" --no-progress
if [ -f checkpoints/anoddpm/card.json ]; then
  $PY -m anomaly.evaluate --data data/cohort/test --methods anoddpm --max-slices 60 --seed 0 --out "$OUT/test_anoddpm_subset60" --no-progress
fi
LOO=$($PY -c "from pathlib import Path; from anomaly.methods.base import available_methods; print(','.join(available_methods(Path('checkpoints/loo'))))")
if [ -n "$LOO" ]; then
  $PY -m anomaly.evaluate --data data/cohort/test_heldout --methods "$LOO" --checkpoints checkpoints/loo --out "$OUT/heldout" --no-progress
fi
$PY -m anomaly.evaluate --data data/cohort/test_domain_shift --methods "$SINGLE" --out "$OUT/domain_shift" --no-progress
