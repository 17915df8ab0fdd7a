"""Experiment (val_lesion only): fuse two methods' calibrated *maps* pixel by pixel, then score.

DDAD's refined map fires on focal healthy structures; the diffusion model's and the DAE's maps
have other false positives. A lesion lights up several maps, a healthy structure fewer. Here
each pair's calibrated maps (map / its healthy pixel threshold) are fused by the geometric mean
or the minimum, and the fused map is scored by the contract's top-1% mean, conditioned on brain
fill with a reference fitted on the fused maps of val_normal (no lesion label). Judged by
val_lesion image AUROC and pixel AP (all slices; lesion-free slices as empty masks). No test data is
read. Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/map_fusion.py [METHOD ...]
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

NAMES = sys.argv[1:] or ["ddad", "anoddpm", "dae", "feature", "consensus"]
vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fill_n, fill_l = brain_fill(vn.masks), brain_fill(vl.masks)
cmap_n, cmap_l = {}, {}


def judge(name, fn, fl):
    """Image AUROC (fill-conditioned top-1% score) and pixel AP of fused maps ``fl``."""
    ref = fit_fill_reference(image_score_from_map(fn, vn.masks), fill_n)
    s = ref.condition(image_score_from_map(fl, vl.masks), fill_l)
    ap = metrics.pixel_ap(vl.lesions, fl, vl.masks)
    print(f"{name:32s} image AUROC {metrics.image_auroc(vl.labels, s):.3f}  pixel AP {ap:.3f}", flush=True)


for n in NAMES:
    m = get_method(n)
    cmap_n[n] = run_method(m, _as_prepared(vn), seed=0).calibrated_map
    cmap_l[n] = run_method(m, _as_prepared(vl), seed=0).calibrated_map
    judge(n + " alone", cmap_n[n], cmap_l[n])
for a, b in itertools.combinations(NAMES, 2):
    judge(f"{a} x {b} geometric mean", np.sqrt(cmap_n[a] * cmap_n[b]), np.sqrt(cmap_l[a] * cmap_l[b]))
    judge(f"{a} x {b} minimum", np.minimum(cmap_n[a], cmap_n[b]), np.minimum(cmap_l[a], cmap_l[b]))
