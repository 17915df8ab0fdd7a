"""Experiment (validation volumes only): volume scores other than the contract's max over every slice.

Reads the per-slice scores that ``benchmarks/experiments/opening_slice.py`` caches (runs/opening/,
40 volumes of cohorts built with seeds 1-10, 20 with a lesion) and prints each method's volume
AUROC for the max over the slices with at least FRAC of the largest brain section, and for the
mean of the top k of those. Results: README, "Whole volumes".
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/volume_score.py
"""
import glob, numpy as np
from sklearn.metrics import roc_auc_score
fs = sorted(glob.glob("runs/opening/*.npz"))
Z = [np.load(f) for f in fs]
y = np.array([int((z["lesion_px"] > 0).any()) for z in Z])
methods = list(Z[0]["methods"])
print(len(Z), y.sum())
for frac in (0, 0.3, 0.5, 0.7):
    row = []
    for mi, m in enumerate(methods):
        s = []
        for z in Z:
            cand = z["valid"] & (z["brain_px"] >= frac * z["brain_px"].max())
            s.append(z["scores"][mi][cand].max())
        row.append(f"{m} {roc_auc_score(y, s):.2f}")
    print(f"frac {frac}: " + ", ".join(row))
# top-k mean over candidates
for k in (3, 5):
    row = []
    for mi, m in enumerate(methods):
        s = []
        for z in Z:
            cand = z["valid"] & (z["brain_px"] >= 0.5 * z["brain_px"].max())
            v = np.sort(z["scores"][mi][cand])[::-1][:k]
            s.append(v.mean())
        row.append(f"{m} {roc_auc_score(y, s):.2f}")
    print(f"top{k} frac0.5: " + ", ".join(row))
