"""Experiment (val_lesion only): divide each map by a healthy profile of map value vs distance to the
brain-mask edge (learned on 500 train slices): plane-agnostic. Compare with the raw map.

Run from the repository root after `make data` (val_lesion only, never test):
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/edge_profile.py dae feature vae ae
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
import numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
from scipy import ndimage
from anomaly.data.prepared import load_prepared
from anomaly.methods.base import get_method
from anomaly.scoring import image_score_from_map, run_method
from anomaly.train import _as_prepared
from anomaly import metrics

def maps_of(m, ps):
    """Post-processed maps of a prepared set through the one scoring path."""
    return run_method(m, _as_prepared(ps), seed=0).anomaly_map

def dist(masks):
    return np.stack([ndimage.distance_transform_edt(m) for m in masks])

D = 40
rng = np.random.default_rng(0)
tr = load_prepared(Path("data/cohort/train")); tr = tr.subset(rng.choice(len(tr), 500, replace=False))
vl = load_prepared(Path("data/cohort/val_lesion"))
dt, dv = np.minimum(dist(tr.masks), D).astype(int), np.minimum(dist(vl.masks), D).astype(int)
for name in sys.argv[1:]:
    m = get_method(name); mt, mv = maps_of(m, tr), maps_of(m, vl)
    ins = tr.masks
    for stat in ("mean", "p99"):
        prof = np.array([ (mt[ins & (dt == d)].mean() if stat == "mean" else np.percentile(mt[ins & (dt == d)], 99)) if (ins & (dt == d)).any() else 0 for d in range(D + 1)])
        prof = np.maximum(prof, prof[prof > 0].min())
        norm = mv / prof[dv]
        for lab, mm in (("raw", mv), (stat, norm)):
            sc = image_score_from_map(mm, vl.masks)
            print(f"{name:8s} {lab:5s} pixAP {metrics.pixel_ap(vl.lesions, mm, vl.masks):.3f} imgAUROC {metrics.image_auroc(vl.labels, sc):.3f}", flush=True)
    print(name, "profile", np.round(prof[:12] / prof[-1], 2), flush=True)
