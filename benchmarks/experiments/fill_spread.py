"""Experiment (val_lesion only): how the brain-fill reference estimates its spread.

The contract conditions a raw slice score as (score - healthy median) / (p90 - p50) in each of 10
brain-fill bins of val_normal. With 158 healthy slices a bin holds about 16, so its p90 - p50 is
rough: a bin whose few healthy slices happen to agree gets a tiny spread and multiplies the scores
of every slice of that fill (a numerics audit, session 19, found one ddad bin 5-7x narrower than
its neighbours, holding most of the top test scores, healthy ones among them). Candidates, each
fitted on val_normal with the brain extractor's masks (the app's pipeline) and judged by val_lesion
image AUROC (fill-conditioned top-1% score):
  binned      the contract as it is (floor 1e-3 x median spread)
  floorF      each bin's spread at least F x the median spread of the bins
  smooth3     each bin's spread the median of it and its two neighbours
  pooled      one spread for all bins: p90 - p50 of (score - bin median) over every healthy slice
No test data is read. From the repository root, after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/fill_spread.py [METHOD ...]
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

NAMES = sys.argv[1:] or ["ddad", "consensus", "dae", "ae", "feature", "vae", "fanogan", "zscore"]
vn = load_prepared(Path("data/cohort/val_normal"), use_brainmasks=False)
vl = load_prepared(Path("data/cohort/val_lesion"), use_brainmasks=False)
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)


def conditioned(ref, spread, scores, fill):
    lf = np.log(np.asarray(fill, np.float64) + 1.0)
    med = np.interp(lf, ref.log_fill, ref.median)
    sp = np.interp(lf, ref.log_fill, spread)
    return (scores - med) / np.maximum(sp, 1e-12)


for name in NAMES:
    m = get_method(name)
    sn = run_method(m, _as_prepared(vn), seed=0).raw_scores
    sl = run_method(m, _as_prepared(vl), seed=0).raw_scores
    ref = fit_fill_reference(sn, fn)
    sp = np.asarray(ref.spread)
    variants = {"binned": ref.condition(sl, fl)}
    for f in (0.25, 0.5):
        variants[f"floor{f}"] = conditioned(ref, np.maximum(sp, f * np.median(sp)), sl, fl)
    pad = np.concatenate([sp[:1], sp, sp[-1:]])
    variants["smooth3"] = conditioned(ref, np.median(np.stack([pad[:-2], pad[1:-1], pad[2:]]), 0), sl, fl)
    resid = sn - np.interp(np.log(fn + 1.0), ref.log_fill, ref.median)
    pooled = float(np.percentile(resid, 90) - np.percentile(resid, 50))
    variants["pooled"] = conditioned(ref, np.full_like(sp, pooled), sl, fl)
    ratio = sp.max() / max(sp.min(), 1e-12)
    print(f"{name:9s} spread max/min {ratio:6.1f} | raw {metrics.image_auroc(vl.labels, sl):.3f} | "
          + " ".join(f"{k} {metrics.image_auroc(vl.labels, v):.3f}" for k, v in variants.items()), flush=True)
