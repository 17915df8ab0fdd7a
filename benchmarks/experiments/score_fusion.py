"""Experiment (val_lesion only): image-level fusion of several methods' calibrated slice scores.

The consensus fuses calibrated *maps*; this fuses slice *scores*: the mean (or max) of each
method's healthy percentile (``Calibration.percentile`` of its brain-fill conditioned score) over a
subset of methods, judged by val_lesion image AUROC. No test data is read. Run from the repository
root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/score_fusion.py [METHOD ...]
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

NAMES = sys.argv[1:] or ["ddad", "feature", "dae", "ae", "vae", "consensus"]
vl = load_prepared(Path("data/cohort/val_lesion"))
pct, z = {}, {}
for n in NAMES:
    r = run_method(get_method(n), _as_prepared(vl), seed=0)
    pct[n], z[n] = r.percentiles, r.scores
    print(f"{n:9s} alone {metrics.image_auroc(vl.labels, r.scores):.3f}", flush=True)
rows = []
for k in (2, 3):
    for combo in itertools.combinations(NAMES, k):
        mean_p = np.mean([pct[n] for n in combo], 0)
        mean_z = np.mean([z[n] for n in combo], 0)
        rows.append((metrics.image_auroc(vl.labels, mean_p), metrics.image_auroc(vl.labels, mean_z), combo))
for a_p, a_z, combo in sorted(rows, reverse=True)[:12]:
    print(f"{'+'.join(combo):28s} mean percentile {a_p:.3f}  mean conditioned score {a_z:.3f}")
