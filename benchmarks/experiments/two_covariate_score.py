"""Experiment (val_lesion only): condition the slice score on brain fill AND on how many pieces the
brain mask falls into (skull-base slices show temporal lobes and cerebellum apart).

The contract conditions on brain fill alone (``anomaly.calibration.FillReference``). Here the
healthy val_normal slices are first split by their number of brain-mask components (1 vs 2 or
more, ignoring specks under 1% of the brain), and a fill reference is fitted within each group
(5 bins each, so each bin keeps about as many slices as the contract's 10 bins). No lesion label
is used to fit it; val_lesion only judges it. Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/two_covariate_score.py ddad dae ae feature vae consensus
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402


def pieces(masks: np.ndarray) -> np.ndarray:
    """(N,) 1 if a slice's brain is one piece, else 2 (components under 1% of the brain ignored)."""
    out = np.ones(len(masks), np.int64)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            out[i] = 1 if (sizes >= 0.01 * sizes.sum()).sum() <= 1 else 2
    return out


vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
pn, pl = pieces(vn.masks), pieces(vl.masks)
print(f"val_normal slices in 2+ pieces: {(pn == 2).sum()} of {len(pn)}; val_lesion: {(pl == 2).sum()} of {len(pl)}")
for name in sys.argv[1:]:
    m = get_method(name)
    sn = run_method(m, _as_prepared(vn), seed=0).raw_scores
    sl = run_method(m, _as_prepared(vl), seed=0).raw_scores
    one = fit_fill_reference(sn, fn).condition(sl, fl)
    two = np.empty_like(sl)
    for g in (1, 2):
        ref = fit_fill_reference(sn[pn == g], fn[pn == g], n_bins=5)
        two[pl == g] = ref.condition(sl[pl == g], fl[pl == g])
    print(f"{name:9s} raw {metrics.image_auroc(vl.labels, sl):.3f}  fill {metrics.image_auroc(vl.labels, one):.3f}  "
          f"fill+pieces {metrics.image_auroc(vl.labels, two):.3f}", flush=True)
