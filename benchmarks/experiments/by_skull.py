"""Experiment (val_lesion only): image AUROC / pixel AP split by with-skull vs stripped source.

Run from the repository root after `make data` (val_lesion only, never test):
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/by_skull.py dae feature vae ae
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys, numpy as np, pandas as pd, torch
from pathlib import Path
torch.set_num_threads(1)
from anomaly.data.prepared import load_prepared
from anomaly.methods.base import get_method
from anomaly.scoring import run_method
from anomaly.train import _as_prepared
from anomaly import metrics
vl = load_prepared(Path("data/cohort/val_lesion"))
lab = pd.read_csv("data/cohort/val_lesion/labels.csv").set_index("file")
skull = np.array([int(lab.loc[n.split(":")[0] + ".png", "skull"]) for n in vl.names])
print("skull slices", skull.sum(), "of", len(skull), flush=True)
for name in sys.argv[1:]:
    m = get_method(name)
    r = run_method(m, _as_prepared(vl), seed=0)  # the one scoring path
    mv, sc = r.anomaly_map, r.scores
    for g, sel in (("all", skull >= 0), ("stripped", skull == 0), ("skull", skull == 1)):
        print(f"{name:8s} {g:8s} n={sel.sum():3d} imgAUROC {metrics.image_auroc(vl.labels[sel], sc[sel]):.3f} "
              f"pixAP {metrics.pixel_ap(vl.lesions[sel], mv[sel], vl.masks[sel]):.3f}", flush=True)
