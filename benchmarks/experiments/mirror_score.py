"""Experiment (val_lesion only): a slice score from the part of the map its left-right mirror lacks.

The worst false positives of ddad on test (docs/benchmark/montage_ddad.png) are mid-brain healthy
slices with two mirror-image blobs, one per hemisphere; the synthetic lesions, like most real ones,
lie in one hemisphere. Here the slice score is the top-1% mean of
``max(map - maximum_filter(mirror(map), k), 0)`` (k x k tolerance for a brain not exactly centred
or tilted), then conditioned on brain fill as the contract does (reference fitted on val_normal).
Maps, and so pixel figures, are untouched. No test data is read. Run from the repository root:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/mirror_score.py ddad dae ae feature vae consensus
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
from anomaly.scoring import image_score_from_map, run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

TOLERANCES = (1, 5, 9, 15)


def mirror_residual(maps: np.ndarray, k: int) -> np.ndarray:
    """(N,S,S) map minus its left-right mirror (max-filtered k x k), clipped at 0."""
    mirrored = np.flip(maps, -1)
    if k > 1:
        mirrored = ndimage.maximum_filter(mirrored, size=(1, k, k))
    return np.clip(maps - mirrored, 0, None)


vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
for name in sys.argv[1:]:
    m = get_method(name)
    rn, rl = run_method(m, _as_prepared(vn), seed=0), run_method(m, _as_prepared(vl), seed=0)
    ref = fit_fill_reference(rn.raw_scores, fn)
    row = [f"{name:9s} top1% {metrics.image_auroc(vl.labels, ref.condition(rl.raw_scores, fl)):.3f}"]
    for k in TOLERANCES:
        sn = image_score_from_map(mirror_residual(rn.anomaly_map, k), vn.masks)
        sl = image_score_from_map(mirror_residual(rl.anomaly_map, k), vl.masks)
        r = fit_fill_reference(sn, fn)
        row.append(f"mirror k={k} {metrics.image_auroc(vl.labels, r.condition(sl, fl)):.3f}")
    print("  ".join(row), flush=True)
