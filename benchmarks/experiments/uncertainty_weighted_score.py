"""Experiment (val_lesion only): DDAD's slice score with its own uncertainty map down-weighting the map.

ddad's worst false positives are focal healthy structures (docs/benchmark/montage_ddad.png). If the
NDM ensemble members disagree there (high intra-discrepancy, the method's uncertainty map), dividing
the refined map by ``1 + alpha * intra / ref`` (ref: the 99.5th percentile of intra inside the brain
of the healthy val_normal slices) before the contract's top-1% score would rank them lower. The
score is then conditioned on brain fill as the contract does (reference refitted on val_normal).
Maps shown in the app are not changed by this experiment. No test data is read. Run from the
repository root:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/uncertainty_weighted_score.py
Results and the decision: docs/benchmark/what_was_tried.md.
"""
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, postprocess_residual, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)

# the app's pipeline: the brain extractor's masks, not the cohort's ground truth
vn = load_prepared(Path("data/cohort/val_normal"), use_brainmasks=False)
vl = load_prepared(Path("data/cohort/val_lesion"), use_brainmasks=False)
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
m = get_method("ddad")
rn, rl = run_method(m, _as_prepared(vn), seed=0), run_method(m, _as_prepared(vl), seed=0)
intra_n = postprocess_residual(rn.extra_maps["intra_discrepancy"], vn.masks)
intra_l = postprocess_residual(rl.extra_maps["intra_discrepancy"], vl.masks)
ref = float(np.percentile(intra_n[vn.masks], 99.5))
les = vl.lesions
print(f"val_lesion: {int((vl.labels == 1).sum())} lesion slices, {int((vl.labels == 0).sum())} healthy; intra ref {ref:.4f}")
if les is not None:  # where is ddad's uncertainty high: inside lesions or on healthy slices' hot spots?
    hot = rl.anomaly_map >= np.percentile(rn.anomaly_map[vn.masks], 99.5)
    inside = intra_l[les & vl.masks].mean() / ref
    healthy_hot = intra_n[(rn.anomaly_map >= np.percentile(rn.anomaly_map[vn.masks], 99.5)) & vn.masks].mean() / ref
    print(f"mean intra / ref: inside lesions {inside:.3f}; at healthy slices' hot spots {healthy_hot:.3f}; "
          f"whole healthy brain {intra_n[vn.masks].mean() / ref:.3f}")
for alpha in ALPHAS:
    wn = rn.anomaly_map / (1.0 + alpha * intra_n / ref)
    wl = rl.anomaly_map / (1.0 + alpha * intra_l / ref)
    sn, sl = image_score_from_map(wn, vn.masks), image_score_from_map(wl, vl.masks)
    r = fit_fill_reference(sn, fn)
    auc = metrics.image_auroc(vl.labels, r.condition(sl, fl))
    ap = metrics.pixel_ap([les[i] for i in range(len(vl))], [wl[i] for i in range(len(vl))],
                          [vl.masks[i] for i in range(len(vl))]) if les is not None and hasattr(metrics, "pixel_ap") else float("nan")
    print(f"alpha {alpha:4.1f}: image AUROC {auc:.3f}  pixel AP {ap:.3f}", flush=True)
