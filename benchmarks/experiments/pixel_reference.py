"""Experiment (val_lesion only): divide each post-processed map by a healthy per-pixel reference
(in the brain-box model frame) learned on train slices. Prints pixel AP / image AUROC before/after.

Run from the repository root after `make data` (val_lesion only, never test):
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/pixel_reference.py dae feature vae ae
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys, time
import numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
from anomaly.data.prepared import load_prepared
from anomaly.methods.base import get_method
from anomaly.scoring import image_score_from_map, run_method
from anomaly.train import _as_prepared
from anomaly import metrics
from scipy import ndimage

def maps_of(m, ps):
    """Post-processed maps of a prepared set through the one scoring path."""
    return run_method(m, _as_prepared(ps), seed=0).anomaly_map

rng = np.random.default_rng(0)
tr = load_prepared(Path("data/cohort/train"))
tr = tr.subset(rng.choice(len(tr), 500, replace=False))
vl = load_prepared(Path("data/cohort/val_lesion"))
print(len(tr), len(vl), vl.lesions is not None, flush=True)
for name in sys.argv[1:]:
    t = time.time()
    m = get_method(name)
    mt, mv = maps_of(m, tr), maps_of(m, vl)
    cnt = tr.masks.sum(0)
    for kind in ("mean", "p95"):
        if kind == "mean":
            ref = np.where(cnt > 0, mt.sum(0) / np.maximum(cnt, 1), 0)
        else:
            x = np.where(tr.masks, mt, np.nan)
            ref = np.nan_to_num(np.nanpercentile(x, 95, axis=0))
        ref = ndimage.gaussian_filter(ref, 3)
        floor = np.percentile(ref[cnt > len(tr) * 0.05], 10)
        norm = mv / np.maximum(ref, floor)[None]
        for lab, mm in (("raw", mv), (kind, norm)):
            sc = image_score_from_map(mm, vl.masks)
            print(f"{name:8s} {lab:5s} pixAP {metrics.pixel_ap(vl.lesions, mm, vl.masks):.3f} "
                  f"pixAUROC {metrics.pixel_auroc(vl.lesions, mm, vl.masks):.3f} imgAUROC {metrics.image_auroc(vl.labels, sc):.3f}", flush=True)
    print(name, f"{time.time()-t:.0f}s", flush=True)
