"""Calibration against healthy validation data (a contract; see docs/contracts.md).

* pixel threshold: the ``PIXEL_PERCENTILE`` percentile of post-processed map values inside
  the brain masks of the healthy validation slices;
* calibrated map: post-processed map / pixel threshold (1.0 = threshold for every method,
  so colours compare across methods);
* image-score percentile: the rank of a raw slice score among the healthy validation
  slice scores (0-100; 99 means higher than 99% of healthy slices);
* brain-fill conditioning (cards that carry a ``fill_reference``): a slice's raw score is first
  rescaled by what healthy validation slices of similar brain fill score,
  ``(raw - median) / (p90 - p50)`` of its fill bin, so that skull-base and vertex slices, whose
  healthy residuals run high, are not ranked above lesions for their anatomy alone; percentiles
  and the volume score then use the conditioned score;
* volume score: the maximum of the scored slices' scores (``volume_score``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from anomaly.errors import CheckpointError

PIXEL_PERCENTILE = 99.5
IMAGE_DECISION_PERCENTILE = 95.0  # a slice/volume is "anomalous" above this healthy percentile
N_QUANTILES = 201
FILL_BINS = 10  # bins of equal healthy count for the brain-fill conditioning


def brain_fill(masks: np.ndarray) -> np.ndarray:
    """(N,) brain pixels of each model-space slice mask: how much of its brain box a slice fills."""
    m = np.asarray(masks, bool)
    return m.reshape(len(m), -1).sum(1).astype(np.float64)


@dataclass
class FillReference:
    """Healthy slice scores as a function of brain fill: per fill bin (centres in log pixels) the
    median and the p90 - p50 spread of healthy validation scores, interpolated in between."""

    log_fill: list[float]
    median: list[float]
    spread: list[float]

    def condition(self, scores, fill) -> np.ndarray:
        """Raw scores -> ``(score - healthy median) / healthy spread`` at each slice's fill."""
        lf = np.log(np.asarray(fill, np.float64) + 1.0)
        x = np.asarray(self.log_fill, np.float64)
        med = np.interp(lf, x, self.median)
        spread = np.interp(lf, x, self.spread)
        floor = max(1e-3 * float(np.median(self.spread)), 1e-12)
        return (np.asarray(scores, np.float64) - med) / np.maximum(spread, floor)

    @classmethod
    def from_dict(cls, d: dict) -> "FillReference":
        """From a card: three equal-length lists of finite numbers, ``log_fill`` increasing
        (ValueError otherwise)."""
        cols = [np.asarray(d[k], np.float64) for k in ("log_fill", "median", "spread")]
        if cols[0].ndim != 1 or not len(cols[0]) or any(c.shape != cols[0].shape for c in cols):
            raise ValueError("fill_reference needs log_fill, median and spread of one equal, non-zero length")
        if not all(np.isfinite(c).all() for c in cols) or np.any(np.diff(cols[0]) <= 0):
            raise ValueError("fill_reference needs finite values and an increasing log_fill")
        return cls(*[[float(v) for v in c] for c in cols])


def fit_fill_reference(scores, fill, n_bins: int = FILL_BINS) -> FillReference:
    """The ``FillReference`` of healthy raw slice scores and their brain fill."""
    s = np.asarray(scores, np.float64)
    lf = np.log(np.asarray(fill, np.float64) + 1.0)
    n_bins = int(max(1, min(n_bins, len(s) // 8)))
    edges = np.quantile(lf, np.linspace(0, 1, n_bins + 1))
    centres, med, spread = [], [], []
    for i in range(n_bins):
        sel = (lf >= edges[i]) & (lf <= edges[i + 1])
        if not sel.any():
            continue
        p50, p90 = np.percentile(s[sel], [50, 90])
        centres.append(float(0.5 * (edges[i] + edges[i + 1])))
        med.append(float(p50))
        spread.append(float(p90 - p50))
    order = np.argsort(centres, kind="stable")
    x = np.asarray(centres)[order] + np.arange(len(order)) * 1e-9  # strictly increasing for interp
    return FillReference([float(v) for v in x], [med[i] for i in order], [spread[i] for i in order])


@dataclass
class Calibration:
    pixel_threshold: float
    score_quantiles: list[float]  # N_QUANTILES quantiles (0..100%) of healthy slice scores
    pixel_percentile: float = PIXEL_PERCENTILE
    n_slices: int = 0
    fill_reference: FillReference | None = None  # None: raw scores are the scores (older cards)

    def condition(self, raw_scores, fill) -> np.ndarray:
        """Raw slice scores -> the scores percentiles and decisions use (brain-fill conditioned
        when the card has a reference, else unchanged)."""
        if self.fill_reference is None:
            return np.asarray(raw_scores, np.float64)
        return self.fill_reference.condition(raw_scores, fill)

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
        d = asdict(self)
        if self.fill_reference is None:
            d.pop("fill_reference")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """From a card's ``calibration``; a malformed one is a ``CheckpointError``."""
        try:
            kw = {k: d[k] for k in ("pixel_threshold", "score_quantiles", "pixel_percentile", "n_slices") if k in d}
            ref = d.get("fill_reference")
            return cls(**kw, fill_reference=FillReference.from_dict(ref) if ref else None)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"the card's calibration is malformed ({e})") from None


def fit_calibration(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray,
                    fill: np.ndarray | None = None) -> Calibration:
    """Calibration from post-processed maps, masks and raw scores of healthy validation slices.

    With ``fill`` (``brain_fill`` of each slice) the slice scores are conditioned on brain fill
    (``FillReference``) and the score quantiles are those of the conditioned healthy scores."""
    vals = np.asarray(maps)[np.asarray(masks, bool)]
    thr = float(np.percentile(vals, PIXEL_PERCENTILE)) if vals.size else 1.0
    thr = max(thr, 1e-8)
    s = np.asarray(scores, np.float64)
    ref = None
    if fill is not None:
        ref = fit_fill_reference(s, fill)
        s = ref.condition(s, fill)
    q = np.percentile(s, np.linspace(0, 100, N_QUANTILES))
    return Calibration(thr, [float(x) for x in q], PIXEL_PERCENTILE, int(len(s)), ref)


def volume_score(slice_scores: np.ndarray, valid: np.ndarray) -> float:
    """A volume's score: the max over its scored (valid) slices."""
    s = np.asarray(slice_scores, np.float64)[np.asarray(valid, bool)]
    return float(s.max()) if s.size else float("nan")


def volume_percentile(slice_percentile: float, n_slices: int, n_healthy: int = 0) -> float:
    """How a volume's score (its highest slice score, at ``slice_percentile`` of healthy slices)
    ranks among the highest scores of ``n_slices`` healthy slices, treating the slices as
    independent draws (neighbouring slices are alike, so this errs low). Comparing the maximum of n
    slices with single healthy slices would put nearly every volume, healthy or not, near the 100th
    percentile.

    Without ``n_healthy`` it is 100 * (p / 100) ** n. With it (the calibration's number of healthy
    slices, m) the share F of healthy slices below the score is known only as well as m slices
    tell: F ~ Beta(k + 1, m - k + 1) with k = p * m / 100 of them below, and the figure is
    100 * E[F ** n]. A score above all m healthy slices then reads 100 * (m + 1) / (m + n + 1), the
    most m slices can say of a volume of n (``volume_percentile_ceiling``): about 70 for 158
    healthy slices and 66 scored ones, 17 for a small calibration set of 12."""
    p, n = float(slice_percentile), int(n_slices)
    if not np.isfinite(p) or n < 1:
        return float("nan")
    p = min(max(p, 0.0), 100.0)
    m = int(n_healthy)
    if m <= 0:
        return float(100.0 * (p / 100.0) ** n)
    k = p / 100.0 * m  # E[F^n] for F ~ Beta(a, b) = prod_{i<n} (a + i) / (a + b + i), via log-gamma
    a, b = k + 1.0, m - k + 1.0
    log_e = math.lgamma(a + n) - math.lgamma(a) + math.lgamma(a + b) - math.lgamma(a + b + n)
    return float(100.0 * math.exp(log_e))


def volume_percentile_ceiling(n_slices: int, n_healthy: int) -> float:
    """The highest ``volume_percentile`` a volume of ``n_slices`` scored slices can read against a
    calibration of ``n_healthy`` healthy slices (its top slice above all of them); NaN without them."""
    if n_slices < 1 or n_healthy < 1:
        return float("nan")
    return volume_percentile(100.0, n_slices, n_healthy)


def percentile_text(p: float) -> str:
    """A healthy percentile as a reader says it: "99.5th", "61st", "100th" (not "100.0th")."""
    r = round(float(p), 1)
    if r != int(r):
        return f"{r:.1f}th"
    n = int(r)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
