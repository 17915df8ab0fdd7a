"""Experiment (val_lesion only): test-time averaging over small shifts, on top of DDAD's flip averaging.

Flip averaging (flip_tta.py) lifted DDAD's val pixel AP most: the model's own noise does not follow
the image when it moves, lesions do. Here each map is also averaged over the slice shifted by
+-S pixels along each axis (image and brain mask rolled, the map rolled back), S in SHIFTS, through
the shared post-processing, the top-1% score and the fill conditioning (reference fitted on
val_normal with the same averaging). No test data is read. Run from the repository root:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/shift_tta.py ddad dae
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import get_method  # noqa: E402
from anomaly.scoring import image_score_from_map, postprocess_residual  # noqa: E402

SHIFTS = (0, 2, 4)


def averaged_map(method, images, masks, s: int, batch: int = 32) -> np.ndarray:
    """Post-processed map averaged over the slice and its four +-s pixel shifts (s = 0: one pass)."""
    offsets = [(0, 0)] + ([(s, 0), (-s, 0), (0, s), (0, -s)] if s else [])
    out = np.zeros(images.shape, np.float32)
    for dy, dx in offsets:
        xi = np.roll(images, (dy, dx), axis=(1, 2))
        mi = np.roll(masks, (dy, dx), axis=(1, 2))
        res = np.concatenate([method.predict(xi[i:i + batch], mi[i:i + batch], seed=0).residual
                              for i in range(0, len(xi), batch)])
        out += np.roll(np.abs(res), (-dy, -dx), axis=(1, 2))
    return postprocess_residual(out / len(offsets), masks)


vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
for name in sys.argv[1:]:
    m = get_method(name)
    row = [f"{name:9s}"]
    for s in SHIFTS:
        mn, ml = averaged_map(m, vn.images, vn.masks, s), averaged_map(m, vl.images, vl.masks, s)
        ref = fit_fill_reference(image_score_from_map(mn, vn.masks), fn)
        auroc = metrics.image_auroc(vl.labels, ref.condition(image_score_from_map(ml, vl.masks), fl))
        ap = average_precision_score(vl.lesions[vl.masks], ml[vl.masks])
        row.append(f"shift {s}: image AUROC {auroc:.3f} pixel AP {ap:.3f}")
    print("  ".join(row), flush=True)
