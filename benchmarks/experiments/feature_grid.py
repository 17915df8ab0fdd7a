"""Experiment (val_lesion only): the feature method's settings chosen for image-level detection.

The shipped settings of ``anomaly.methods.feature`` were chosen on val_lesion pixel AP. PatchCore
leads BMAD's brain benchmark at image level, so this grid refits the memory bank under other
settings (deeper stages, position weight, pooling, its own max-distance image score) and reports
val_lesion image AUROC (brain-fill conditioned score, the contract) and pixel AP. Each fit goes
through ``anomaly.train`` (calibration on val_normal, figures on val_lesion) into
runs/feature_grid/NAME; no test data is read. The deeper settings need a converted backbone with
enough blocks in their folder first (`python -m anomaly.methods.feature convert --blocks 8 (or 11)
--out runs/feature_grid/NAME/backbone.safetensors`). Run from the repository root after `make data`:
    ANOMALY_THREADS=2 PYTHONPATH=. .venv/bin/python benchmarks/experiments/feature_grid.py [NAME ...]
Results and the decision: docs/benchmark/what_was_tried.md.
"""
import json
import sys
from pathlib import Path

from anomaly.methods.feature import method as feature
from anomaly.train import train
from anomaly.training import TrainConfig

GRID = {
    "base": {},
    "max": {"image_score": "max"},
    "pos0": {"pos_weight": 0.0},
    "pos30": {"pos_weight": 30.0},
    "pool5": {"local_pool": 5},
    "deep47": {"layers": [4, 7]},
    "deep47_256": {"layers": [4, 7], "input_size": 256},
    "deep410_256": {"layers": [4, 10], "input_size": 256},
    "deep47_256_pos30": {"layers": [4, 7], "input_size": 256, "pos_weight": 30.0},
}
BASE = dict(feature.DEFAULT_CFG)

for name in sys.argv[1:] or list(GRID):
    feature.DEFAULT_CFG.clear()
    feature.DEFAULT_CFG.update({**BASE, **GRID[name]})
    out = Path("runs/feature_grid") / name
    card = train("feature", Path("data/cohort"), out, TrainConfig(seed=0, device="cpu"),
                 command=f"benchmarks/experiments/feature_grid.py {name}")
    v = card["validation"]
    print(json.dumps({"name": name, **GRID[name], "val_image_auroc": round(v.get("val_lesion_image_auroc", float("nan")), 3),
                      "val_pixel_ap": round(v.get("val_lesion_pixel_ap", float("nan")), 4),
                      "ms_per_slice": round(v["ms_per_slice"], 1)}), flush=True)
