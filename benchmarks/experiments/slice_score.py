"""Experiment (val_lesion only): which unsupervised slice score separates lesion slices best?

Every candidate is computed from the same post-processed map of the one scoring path and the
method's healthy calibration (pixel threshold from val_normal); no lesion label is used to
form a score. Candidates:
  top1      mean of the top 1% of the map inside the brain (the contract's default)
  top0.1    mean of the top 0.1%
  frac      fraction of the brain above the healthy pixel threshold
  blob      area of the largest connected region above the threshold
  mass      sum of (calibrated map - 1)+ over that largest region
  contrast  top-1% mean divided by the slice's own median inside the brain
Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/slice_score.py dae ddad vae feature
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

torch.set_num_threads(1)
from anomaly import metrics  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402


def candidates(maps: np.ndarray, masks: np.ndarray, thr: float) -> dict[str, np.ndarray]:
    n = len(maps)
    out = {"top1": image_score_from_map(maps, masks, 0.01), "top0.1": image_score_from_map(maps, masks, 0.001)}
    frac, blob, mass, contrast = (np.zeros(n) for _ in range(4))
    for i in range(n):
        m = masks[i]
        cal = maps[i] / thr
        above = (cal > 1) & m
        frac[i] = above.sum() / max(m.sum(), 1)
        lab, k = ndimage.label(above)
        if k:
            sizes = ndimage.sum(above, lab, range(1, k + 1))
            j = int(np.argmax(sizes)) + 1
            blob[i] = sizes[j - 1]
            mass[i] = float(np.clip(cal[lab == j] - 1, 0, None).sum())
        med = float(np.median(maps[i][m])) if m.any() else 0.0
        contrast[i] = out["top1"][i] / (med + 1e-3 * thr)
    out.update(frac=frac, blob=blob, mass=mass, contrast=contrast)
    return out


if __name__ == "__main__":
    vl = load_prepared(Path("data/cohort/val_lesion"))
    for name in sys.argv[1:]:
        m = get_method(name)
        r = run_method(m, _as_prepared(vl), seed=0)  # the one scoring path
        thr = r.calibration.pixel_threshold
        row = " ".join(f"{k} {metrics.image_auroc(vl.labels, v):.3f}" for k, v in candidates(r.anomaly_map, vl.masks, thr).items())
        print(f"{name:9s} image AUROC: {row}", flush=True)
