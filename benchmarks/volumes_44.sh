#!/usr/bin/env bash
# Whole-volume figures on more volumes than the cohort's 4 test volumes: the cohort's test_volumes
# plus the test_volumes of cohorts built with seeds 11-20 (the same generator, other pseudo-subjects;
# seeds 1-10 are the validation volumes of benchmarks/experiments/opening_slice.py), 44 volumes in
# all, 22 with a lesion. About 4 minutes of building and 15 of scoring on 2 CPU cores.
#   OUT=runs/volumes_44 benchmarks/volumes_44.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/volumes_44}
WORK=${WORK:-/tmp/volumes_44}
for s in 11 12 13 14 15 16 17 18 19 20; do
  [ -f "$WORK/s$s/test_volumes/labels.csv" ] || $PY -m anomaly.data build --out "$WORK/s$s" --seed "$s" --only test_volumes
done
$PY - "$WORK" <<'PYEOF'
import csv, shutil, sys
from pathlib import Path
work = Path(sys.argv[1]); out = work / "all"
shutil.rmtree(out, ignore_errors=True)
(out / "images").mkdir(parents=True); (out / "masks").mkdir()
roots = [work / f"s{s}" / "test_volumes" for s in range(11, 21)] + [Path("data/cohort/test_volumes")]
rows = []
for r in roots:
    tag = r.parent.name
    for row in csv.DictReader(open(r / "labels.csv")):
        f, new = row["file"], f"{tag}_{row['file']}"
        shutil.copy(r / "images" / f, out / "images" / new)
        if (r / "masks" / f).exists():
            shutil.copy(r / "masks" / f, out / "masks" / new)
        rows.append({**row, "file": new})
with open(out / "labels.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
PYEOF
$PY -m anomaly.evaluate_volumes --data "$WORK/all" --out "$OUT"
