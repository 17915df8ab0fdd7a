"""Calibration against healthy validation data (a contract; see docs/contracts.md).

* pixel threshold: the ``PIXEL_PERCENTILE`` percentile of post-processed map values inside
  the brain masks of the healthy validation slices;
* calibrated map: post-processed map / pixel threshold (1.0 = threshold for every method,
  so colours compare across methods);
* image-score percentile: the rank of a raw slice score among the healthy validation
  slice scores (0-100; 99 means higher than 99% of healthy slices);
* volume score: the maximum of the scored slices' raw scores (``volume_score``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PIXEL_PERCENTILE = 99.5
IMAGE_DECISION_PERCENTILE = 95.0  # a slice/volume is "anomalous" above this healthy percentile
N_QUANTILES = 201


@dataclass
class Calibration:
    pixel_threshold: float
    score_quantiles: list[float]  # N_QUANTILES quantiles (0..100%) of healthy slice scores
    pixel_percentile: float = PIXEL_PERCENTILE
    n_slices: int = 0

    def percentile(self, scores) -> np.ndarray:
        """Raw scores -> percentile among healthy validation slices (0..100)."""
        q = np.asarray(self.score_quantiles, np.float64)
        levels = np.linspace(0, 100, len(q))
        s = np.asarray(scores, np.float64)
        # strictly increasing xp for interp: add a tiny ramp to ties
        xp = q + np.arange(len(q)) * 1e-12
        return np.interp(s, xp, levels, left=0.0, right=100.0)

    @property
    def image_threshold(self) -> float:
        """Raw score at IMAGE_DECISION_PERCENTILE of healthy slices."""
        q = np.asarray(self.score_quantiles)
        return float(np.interp(IMAGE_DECISION_PERCENTILE, np.linspace(0, 100, len(q)), q))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**{k: d[k] for k in ("pixel_threshold", "score_quantiles", "pixel_percentile", "n_slices") if k in d})


def fit_calibration(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> Calibration:
    """Calibration from post-processed maps, masks and raw scores of healthy validation slices."""
    vals = np.asarray(maps)[np.asarray(masks, bool)]
    thr = float(np.percentile(vals, PIXEL_PERCENTILE)) if vals.size else 1.0
    thr = max(thr, 1e-8)
    q = np.percentile(np.asarray(scores, np.float64), np.linspace(0, 100, N_QUANTILES))
    return Calibration(thr, [float(x) for x in q], PIXEL_PERCENTILE, int(len(scores)))


def volume_score(slice_scores: np.ndarray, valid: np.ndarray) -> float:
    """A volume's score: the max over its scored (valid) slices."""
    s = np.asarray(slice_scores, np.float64)[np.asarray(valid, bool)]
    return float(s.max()) if s.size else float("nan")
