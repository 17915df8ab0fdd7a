"""Print the README's figures that come from stored per-item results rather than a metrics table.

    PYTHONPATH=. .venv/bin/python benchmarks/readme_figures.py
* Whole volumes: each method's volume AUROC on the 44 volumes with its 95% bootstrap CI over
  volumes (anomaly.metrics.bootstrap_ci, 1,000 resamples, seed 0), from docs/benchmark/volumes_44.json.
* Lesion contrast: how many healthy test slices score above the median ddad score of the lesion
  slices >= 10 mm in each contrast group, from docs/benchmark/test_scores.csv (evaluate's scores.csv).
"""
import csv
import json
from pathlib import Path

import numpy as np

from anomaly import metrics as M
from anomaly.evaluate import CONTRAST_BINS, NUMERIC_COLUMNS

ROOT = Path(__file__).resolve().parents[1] / "docs" / "benchmark"

if __name__ == "__main__":
    res = json.loads((ROOT / "volumes_44.json").read_text())
    y = np.array([v["label"] for v in res["volumes"]])
    print(f"whole volumes ({len(y)}, {int(y.sum())} with a lesion): volume AUROC [95% CI]")
    for name in res["methods"]:
        s = np.array([v["methods"][name]["volume_score"] for v in res["volumes"]], float)
        lo, hi = M.bootstrap_ci(M.image_auroc, y, s, n=1000, seed=0)
        print(f"  {name:10s} {M.image_auroc(y, s):.3f} [{lo:.3f}, {hi:.3f}]")
    rows = list(csv.DictReader(open(ROOT / "test_scores.csv", newline="")))
    normal = np.array([float(r["ddad"]) for r in rows if r["label"] == "0"])
    print(f"ddad, lesions >= 10 mm by contrast: healthy slices (of {len(normal)}) above the group's median score")
    for label, lo, hi in CONTRAST_BINS:
        g = [float(r["ddad"]) for r in rows if r["label"] == "1" and r["size_mm"] and float(r["size_mm"]) >= 10
             and r["lesion_contrast"] and lo <= float(r["lesion_contrast"]) < hi]
        med = float(np.median(g))
        print(f"  contrast {label:8s} {len(g):3d} lesion slices, median {med:.2f}: {int((normal > med).sum())} healthy above")
    # how high the >= 10 mm image AUROC could go if only the faint lesions (contrast < 0.1) stayed
    # as they are: every other lesion slice >= 10 mm ranked above every healthy slice
    faint_hi = CONTRAST_BINS[0][2]
    print(f"image AUROC bound on lesions >= 10 mm if every lesion slice of contrast >= {faint_hi:g} "
          "were ranked above every healthy slice, the faint ones kept as scored / at chance:")
    ge10 = [r for r in rows if r["label"] == "1" and r["size_mm"] and float(r["size_mm"]) >= 10]
    faint_rows = [r for r in ge10 if r["lesion_contrast"] and float(r["lesion_contrast"]) < faint_hi]
    n_rest = len(ge10) - len(faint_rows)
    chance = (0.5 * len(faint_rows) + n_rest) / len(ge10)
    for name in [c for c in rows[0] if c not in ("file", "slice", "label", "valid", "kind", *NUMERIC_COLUMNS)]:
        normal_m = np.array([float(r[name]) for r in rows if r["label"] == "0"])
        faint = np.array([float(r[name]) for r in faint_rows])
        # the AUROC is the mean over positives of the share of healthy slices each outranks: the faint
        # ones' mean is their own AUROC against the healthy slices, the others count 1
        y = np.r_[np.zeros(len(normal_m)), np.ones(len(faint))]
        kept = (len(faint) * M.image_auroc(y, np.r_[normal_m, faint]) + n_rest) / len(ge10)
        print(f"  {name:10s} {len(faint)} faint of {len(ge10)}: {kept:.3f} (faint at chance: {chance:.3f})")
