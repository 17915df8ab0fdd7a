"""Experiment (val_lesion only): does left-right flip test-time averaging help a method's map?

For each method the raw residual is the mean of predict(x) and flip(predict(flip(x))); the map
then goes through the one scoring path's post-processing and image score unchanged. Brain
anatomy is near-symmetric, lesions are not, so a false positive that comes from the model's own
noise should shrink while a lesion's residual stays. Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/flip_tta.py ddad dae ae
"""
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

torch.set_num_threads(1)
from anomaly import metrics  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, postprocess_residual  # noqa: E402


def residuals(method, images, masks, flip: bool, batch: int = 32) -> np.ndarray:
    out = []
    for s in range(0, len(images), batch):
        x, m = images[s:s + batch], masks[s:s + batch]
        r = method.predict(x, m, seed=0).residual
        if flip:
            rf = method.predict(np.ascontiguousarray(x[..., ::-1]), np.ascontiguousarray(m[..., ::-1]), seed=0).residual
            r = 0.5 * (r + rf[..., ::-1])
        out.append(r)
    return np.concatenate(out)


if __name__ == "__main__":
    split = Path(sys.argv[1]) if sys.argv[1].startswith("data/") else Path("data/cohort/val_lesion")
    names = [a for a in sys.argv[1:] if not a.startswith("data/")]
    vl = load_prepared(split)
    y = vl.labels
    for name in names:
        m = get_method(name)
        for flip in (False, True):
            maps = postprocess_residual(residuals(m, vl.images, vl.masks, flip), vl.masks)
            s = image_score_from_map(maps, vl.masks)
            print(f"{name:8s} flip={flip!s:5s} image AUROC {metrics.image_auroc(y, s):.3f}  "
                  f"pixel AP {average_precision_score(vl.lesions[vl.masks], maps[vl.masks]):.3f}", flush=True)
