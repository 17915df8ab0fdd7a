"""Experiment (val_lesion only): AnoDDPM's map averaged over several noise levels.

After the session-8 tuning (t_start 25, one DDIM step, two draws; README), does averaging the maps
of several levels help? Each level's map is the shipped method's at that t_start; the slice score
is conditioned on brain fill with a reference refitted on val_normal. No test data is read.
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/anoddpm_levels.py
Results and the decision: docs/benchmark/what_was_tried.md.
"""
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import MethodOutput, get_method  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

LEVELS = [(25,), (15, 25, 40), (10, 25), (25, 40), (25, 60)]

vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
m = get_method("anoddpm")
shipped, single = dict(m.inference), m.predict


def averaged_over(levels):
    def predict(images, masks, seed=0):
        outs = []
        for t in levels:
            m.inference = {**shipped, "t_start": int(t)}
            outs.append(single(images, masks, seed))
        m.inference = shipped
        return MethodOutput(pseudo_healthy=outs[0].pseudo_healthy, residual=np.mean([o.residual for o in outs], 0))
    return predict


for levels in LEVELS:
    m.predict = averaged_over(levels)
    rn, rl = run_method(m, _as_prepared(vn), seed=0), run_method(m, _as_prepared(vl), seed=0)
    auroc = metrics.image_auroc(vl.labels, fit_fill_reference(rn.raw_scores, fn).condition(rl.raw_scores, fl))
    ap = metrics.pixel_ap(vl.lesions, rl.anomaly_map, vl.masks)
    print(f"t_start {'+'.join(map(str, levels)):10s}: val image AUROC {auroc:.3f}  pixel AP {ap:.3f}", flush=True)
