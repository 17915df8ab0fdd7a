"""Experiment (val_lesion only): condition the slice score on how much of the model frame the brain fills.

Healthy slices that fill little of their brain box (skull base, vertex, cerebellum in pieces) score
higher than the others. Each candidate below rescales a slice's raw score (top-1% mean of the one
scoring path) by what healthy ``val_normal`` slices of similar brain fill score; no lesion label is
used to fit it, val_lesion only judges it:
  ratioN  score / median healthy score of its fill bin (N bins of equal healthy count, interpolated)
  zN      (score - that median) / (90th - 50th percentile of the bin)
  polyD   log score minus a degree-D polynomial fit of healthy log score on log brain area
Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/area_conditioned_score.py ddad dae ae feature vae
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402


def binned_reference(la_fit, s_fit, la, n_bins):
    """Median and (p90 - p50) of healthy scores per fill bin, interpolated at ``la`` (the
    contract's ``fit_fill_reference``, which takes brain pixels and logs them itself)."""
    ref = fit_fill_reference(s_fit, np.expm1(la_fit), n_bins)
    return np.interp(la, ref.log_fill, ref.median), np.interp(la, ref.log_fill, ref.spread)


vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
la_n = np.log(vn.masks.reshape(len(vn), -1).sum(1) + 1.0)
la_l = np.log(vl.masks.reshape(len(vl), -1).sum(1) + 1.0)
for name in sys.argv[1:]:
    m = get_method(name)
    sn = run_method(m, _as_prepared(vn), seed=0).raw_scores  # before the cards' own conditioning
    sl = run_method(m, _as_prepared(vl), seed=0).raw_scores
    row = [f"{name:9s} top1 {metrics.image_auroc(vl.labels, sl):.3f}"]
    for nb in (5, 10):
        med, spread = binned_reference(la_n, sn, la_l, nb)
        row.append(f"ratio{nb} {metrics.image_auroc(vl.labels, sl / np.maximum(med, 1e-12)):.3f} "
                   f"z{nb} {metrics.image_auroc(vl.labels, (sl - med) / np.maximum(spread, 1e-12)):.3f}")
    for deg in (1, 2):
        c = np.polyfit(la_n, np.log(sn + 1e-9), deg)
        row.append(f"poly{deg} {metrics.image_auroc(vl.labels, np.log(sl + 1e-9) - np.polyval(c, la_l)):.3f}")
    print(" ".join(row), flush=True)
