"""Experiment (val_lesion only): does left-right flip test-time averaging help a method's map?

Each method is scored as shipped and wrapped in ``anomaly.methods.base.flip_averaged`` (the
mechanism DDAD's ``flip_tta`` card setting switches on), both through the one scoring path and the
training cards' validation figures (``anomaly.train.validation_figures``). Brain anatomy is
near-symmetric, lesions are not, so a false positive from the model's own noise should shrink
while a lesion's residual stays. Run from the repository root after `make data`:
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/flip_tta.py ddad dae ae
(a method whose card already has flip_tta on is averaged in both arms.)
"""
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from anomaly.data.prepared import load_prepared  # noqa: E402
from anomaly.methods.base import flip_averaged, get_method  # noqa: E402
from anomaly.train import validation_figures  # noqa: E402


class FlipAveraged:
    """A loaded method whose ``predict`` is flip-averaged; everything else is the method's."""

    def __init__(self, method):
        self._method = method

    def __getattr__(self, name):
        return getattr(self._method, name)

    def predict(self, images, masks, seed=0):
        return flip_averaged(self._method.predict, images, masks, seed)


if __name__ == "__main__":
    vl = load_prepared(Path("data/cohort/val_lesion"))
    for name in sys.argv[1:]:
        m = get_method(name)
        for flip, method in ((False, m), (True, FlipAveraged(m))):
            v = validation_figures(method, vl, seed=0)
            print(f"{name:8s} flip={flip!s:5s} image AUROC {v['val_lesion_image_auroc']:.3f}  "
                  f"pixel AP {v['val_lesion_pixel_ap']:.3f}", flush=True)
