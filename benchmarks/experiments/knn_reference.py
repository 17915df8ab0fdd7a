"""Experiment (val_lesion only): subtract the maps of the nearest healthy slices before scoring.

DDAD's false positives at image level are focal healthy structures (basal ganglia, folia) that
its refined map flags on healthy slices too. A fixed per-pixel healthy reference assumes one
frame and one plane; this is its plane-agnostic form: for each slice, find the K healthy slices
of a bank that look most like it (preprocessed 128 x 128 images, downsampled to 32 x 32, brain
only), take the mean of their calibrated maps, widen it by a max filter (tolerance for
misalignment), and score max(map - alpha * reference, 0) with the contract's top-1% mean,
conditioned on brain fill with a reference fitted on val_normal treated the same way (its own
pseudo-subject left out of its neighbours). Banks: val_normal (never trained on) or train slices.
Judged by val_lesion image AUROC and pixel AP. No test data is read. From the repository root:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/knn_reference.py [METHOD ...]
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import maximum_filter

torch.set_num_threads(1)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

NAMES = sys.argv[1:] or ["ddad"]
ROOT = Path("data/cohort")


def subjects(split: str, names: list[str]) -> np.ndarray:
    """Pseudo-subject of each prepared slice (from the split's labels.csv)."""
    with open(ROOT / split / "labels.csv") as f:
        by_file = {r["file"].rsplit(".", 1)[0]: r["subject"] for r in csv.DictReader(f)}
    return np.array([by_file.get(n.split(":")[0], n) for n in names])


def descriptor(ps) -> np.ndarray:
    """32 x 32 brain-only image, centred and scaled per slice, flattened."""
    x = torch.from_numpy((ps.images * ps.masks).astype(np.float32))[:, None]
    d = torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy()
    d = d - d.mean(1, keepdims=True)
    return d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-8)


def reference(dq, sq, db, sb, maps_b, k, tol):
    """Mean calibrated map of each query's k nearest bank slices of another pseudo-subject."""
    dist = ((dq[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    dist[sq[:, None] == sb[None, :]] = np.inf
    nn = np.argsort(dist, axis=1)[:, :k]
    ref = maps_b[nn].mean(1)
    return np.stack([maximum_filter(r, size=tol) for r in ref]) if tol > 1 else ref


vn, vl = load_prepared(ROOT / "val_normal"), load_prepared(ROOT / "val_lesion")
tr = load_prepared(ROOT / "train")
rng = np.random.default_rng(0)
tr = tr.subset(np.sort(rng.choice(len(tr), size=min(600, len(tr)), replace=False)))
fill_n, fill_l = brain_fill(vn.masks), brain_fill(vl.masks)
s_n, s_l, s_t = subjects("val_normal", vn.names), subjects("val_lesion", vl.names), subjects("train", tr.names)
d_n, d_l, d_t = descriptor(vn), descriptor(vl), descriptor(tr)

for name in NAMES:
    m = get_method(name)
    cn = run_method(m, _as_prepared(vn), seed=0).calibrated_map
    cl = run_method(m, _as_prepared(vl), seed=0).calibrated_map
    banks = {"val_normal": (d_n, s_n, cn),
             "train600": (d_t, s_t, run_method(m, _as_prepared(tr), seed=0).calibrated_map)}

    def judge(label, fn, fl):
        ref = fit_fill_reference(image_score_from_map(fn, vn.masks), fill_n)
        s = ref.condition(image_score_from_map(fl, vl.masks), fill_l)
        ap = metrics.pixel_ap(vl.lesions, fl, vl.masks)
        print(f"{name:8s} {label:40s} image AUROC {metrics.image_auroc(vl.labels, s):.3f}  pixel AP {ap:.3f}",
              flush=True)

    judge("alone", cn, cl)
    for bank, (db, sb, mb) in banks.items():
        for k in (1, 5, 15):
            for tol in (1, 5, 9):
                rn = reference(d_n, s_n, db, sb, mb, k, tol)
                rl = reference(d_l, s_l, db, sb, mb, k, tol)
                for alpha in (0.5, 1.0):
                    judge(f"{bank} k={k} tol={tol} alpha={alpha}",
                          np.maximum(cn - alpha * rn, 0), np.maximum(cl - alpha * rl, 0))
