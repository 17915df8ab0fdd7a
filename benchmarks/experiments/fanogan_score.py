"""Experiment (val_lesion only): f-AnoGAN's slice score, kappa and the map-based alternative.

f-AnoGAN's own score is mean (x - G(E(x)))^2 + kappa * mean (f(x) - f(G(E(x))))^2 (Schlegl et al.,
kappa = 1). Here kappa is varied and, as an alternative, the contract's map-based score (mean of the
top 1% of the post-processed residual map) is used instead; each is conditioned on brain fill with
a reference refitted on val_normal. No test data is read.
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/fanogan_score.py
Results and the decision: docs/benchmark/what_was_tried.md.
"""
from pathlib import Path

import torch

torch.set_num_threads(1)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
m = get_method("fanogan")
print(f"shipped kappa {m.kappa}")


def auroc(sn, sl) -> float:
    return metrics.image_auroc(vl.labels, fit_fill_reference(sn, fn).condition(sl, fl))


for kappa in (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0):
    m.kappa = kappa
    rn, rl = run_method(m, _as_prepared(vn), seed=0), run_method(m, _as_prepared(vl), seed=0)
    print(f"kappa {kappa:7.1f}: val image AUROC {auroc(rn.raw_scores, rl.raw_scores):.3f}", flush=True)
print(f"top-1% map score: val image AUROC "
      f"{auroc(image_score_from_map(rn.anomaly_map, vn.masks), image_score_from_map(rl.anomaly_map, vl.masks)):.3f}")
