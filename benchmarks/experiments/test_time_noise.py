"""Experiment (val_lesion only): test-time noise for the reconstruction methods.

The tuned diffusion model (README, session 8) works best as a one-step denoiser of slight coarse
noise: noise the slice a little, denoise it once, average two draws. This asks whether the DAE (and
the AE) gain the same way: reconstruction = mean over K draws of net(x + coarse_noise(std, res)),
residual |x - reconstruction|, then the shared post-processing and a brain-fill reference refitted
on val_normal (as the contract does). std 0 is the shipped method. No test data is read.
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/test_time_noise.py dae ae
NOISE_SEEDS=0,1,2,3 repeats each setting with other noise draws (the run's seed; session 9 found
the spread over draws as large as the gain of session 8's single draw).
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
from anomaly import metrics  # noqa: E402
from anomaly.calibration import brain_fill, fit_fill_reference  # noqa: E402
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import MethodOutput, get_method  # noqa: E402
from anomaly.methods.dae.noise import coarse_noise  # noqa: E402
from anomaly.scoring import run_method  # noqa: E402
from anomaly.train import _as_prepared  # noqa: E402

SETTINGS = [(float(s), 16, int(k)) for s, k in (a.split(":") for a in os.environ.get("SETTINGS", "0:1,0.05:2,0.1:2,0.2:2,0.4:2").split(","))]


def noisy_predict(net, std: float, res: int, k: int):
    def predict(images, masks, seed=0):
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        m = np.asarray(masks, np.float32)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            recs = [net(x + coarse_noise(torch.from_numpy(m)[:, None] > 0, res, std, g) if std > 0 else x)
                    for _ in range(k)]
        rec = torch.stack(recs).mean(0)[:, 0].numpy() * m
        return MethodOutput(pseudo_healthy=rec, residual=np.abs(images - rec))
    return predict


vn, vl = load_prepared(Path("data/cohort/val_normal")), load_prepared(Path("data/cohort/val_lesion"))
fn, fl = brain_fill(vn.masks), brain_fill(vl.masks)
SEEDS = [int(s) for s in os.environ.get("NOISE_SEEDS", "0").split(",")]
for name in sys.argv[1:]:
    m = get_method(name)
    for std, res, k in SETTINGS:
        m.predict = noisy_predict(m.net, std, res, k)
        aurocs, aps = [], []
        for seed in SEEDS if std > 0 else SEEDS[:1]:
            rn, rl = run_method(m, _as_prepared(vn), seed=seed), run_method(m, _as_prepared(vl), seed=seed)
            ref = fit_fill_reference(rn.raw_scores, fn)
            aurocs.append(metrics.image_auroc(vl.labels, ref.condition(rl.raw_scores, fl)))
            aps.append(metrics.pixel_ap(vl.lesions, rl.anomaly_map, vl.masks))
            print(f"{name:5s} std {std:.2f} res {res:2d} draws {k} seed {seed}: val image AUROC {aurocs[-1]:.3f}  "
                  f"pixel AP {aps[-1]:.3f}", flush=True)
        if len(aurocs) > 1:
            print(f"{name:5s} std {std:.2f} res {res:2d} draws {k}: over {len(aurocs)} seeds image AUROC "
                  f"{np.mean(aurocs):.3f} +- {np.std(aurocs):.3f} (min {min(aurocs):.3f}, max {max(aurocs):.3f}), "
                  f"pixel AP {np.mean(aps):.3f} +- {np.std(aps):.3f}", flush=True)
