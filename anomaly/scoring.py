"""The one scoring path shared by the app, ``evaluate`` and batch scoring.

preprocess (``anomaly.preprocess``) -> method.predict -> ``postprocess_residual``
(brain mask, median filter; done here once, never inside methods) -> image score
(``image_score_from_map`` unless the method gives its own) -> calibration (the slice score
conditioned on brain fill where the card has a reference: ``slice_scores``).
Maps are returned in model space (S x S) and at the input's resolution via
``PreparedSlices.to_original``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from anomaly.calibration import Calibration, brain_fill, volume_percentile, volume_percentile_ceiling, volume_score
from anomaly.methods.base import AnomalyMethod
from anomaly.preprocess import PreparedSlices

MEDIAN_SIZE = 5
TOP_FRACTION = 0.01  # image score = mean of the top 1% of map values inside the brain
BATCH = 32


def postprocess_residual(residual: np.ndarray, masks: np.ndarray, median_size: int = MEDIAN_SIZE) -> np.ndarray:
    """Residual (N, S, S) -> masked, median-filtered map (N, S, S), >= 0."""
    r = np.nan_to_num(np.abs(np.asarray(residual, np.float32)))
    m = np.asarray(masks, bool)
    out = np.empty_like(r)
    for i in range(len(r)):
        out[i] = ndimage.median_filter(r[i] * m[i], size=median_size) if median_size > 1 else r[i] * m[i]
    return out * m


def image_score_from_map(maps: np.ndarray, masks: np.ndarray, top_fraction: float = TOP_FRACTION) -> np.ndarray:
    """(N,) mean of the highest ``top_fraction`` of map values inside each brain mask."""
    scores = np.zeros(len(maps), np.float64)
    for i, (m, k) in enumerate(zip(maps, masks)):
        v = m[k]
        if v.size == 0:
            continue
        n = max(1, int(np.ceil(top_fraction * v.size)))
        scores[i] = float(np.mean(np.partition(v, -n)[-n:]))
    return scores


def slice_scores(raw: np.ndarray, masks: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """The scores a method's slices are ranked and calibrated by: raw scores, conditioned on
    brain fill when the calibration carries a reference (``Calibration.condition``)."""
    if calibration is None:
        return np.asarray(raw, np.float64)
    return calibration.condition(raw, brain_fill(masks))


@dataclass
class MethodResult:
    """One method's results on a set of prepared slices (model space)."""

    method: str
    pseudo_healthy: np.ndarray | None
    anomaly_map: np.ndarray  # post-processed, raw units
    scores: np.ndarray  # (N,) image scores (``slice_scores``: brain-fill conditioned where calibrated so)
    valid: np.ndarray  # (N,) slices that were scored
    ms_per_slice: float
    checkpoint_hash: str = "none"
    calibration: Calibration | None = None
    extra_maps: dict[str, np.ndarray] = field(default_factory=dict)
    raw_scores: np.ndarray | None = None  # (N,) before conditioning (what calibration is fitted on)

    def __post_init__(self) -> None:
        if self.raw_scores is None:
            self.raw_scores = self.scores

    @property
    def calibrated_map(self) -> np.ndarray:
        """Map / pixel threshold (1.0 = healthy threshold); per-image max if uncalibrated."""
        if self.calibration:
            return self.anomaly_map / self.calibration.pixel_threshold
        peak = self.anomaly_map.reshape(len(self.anomaly_map), -1).max(1).reshape(-1, 1, 1)
        return self.anomaly_map / np.maximum(peak, 1e-8)

    @property
    def percentiles(self) -> np.ndarray:
        """(N,) healthy percentile of each slice score; NaN where uncalibrated or not scored
        (``valid`` False: too little brain, or not scored yet), so no decision is made there."""
        if self.calibration is None:
            return np.full(len(self.scores), np.nan)
        p = np.asarray(self.calibration.percentile(self.scores), np.float64).copy()
        p[~np.asarray(self.valid, bool)] = np.nan
        return p

    @property
    def volume_score(self) -> float:
        return volume_score(self.scores, self.valid)

    @property
    def volume_percentile(self) -> float:
        """The volume score's healthy percentile as a scan-level figure: the highest of this scan's
        scored slices against the highest of as many healthy slices (``calibration.volume_percentile``);
        NaN when uncalibrated or nothing is scored."""
        n = int(np.sum(self.valid))
        if self.calibration is None or n == 0:
            return float("nan")
        return volume_percentile(float(self.calibration.percentile(np.array([self.volume_score]))[0]), n,
                                 int(self.calibration.n_slices or 0))

    @property
    def volume_percentile_ceiling(self) -> float:
        """The highest ``volume_percentile`` this scan can read (its top slice above every healthy
        calibration slice): what the calibration's number of healthy slices can tell of this many
        scored slices; NaN when uncalibrated or the calibration's size is unknown."""
        n = int(np.sum(self.valid))
        m = int(getattr(self.calibration, "n_slices", 0) or 0)
        return volume_percentile_ceiling(n, m)

    @property
    def most_anomalous_slice(self) -> int:
        s = np.where(self.valid, self.scores, -np.inf)
        return int(np.argmax(s)) if len(s) else 0


def run_method(method: AnomalyMethod, prepared: PreparedSlices, seed: int = 0, batch: int = BATCH,
               progress=None) -> MethodResult:
    """Run ``method`` over all prepared slices through the shared post-processing."""
    n = len(prepared)
    s = prepared.images.shape[-1]
    ph = None
    maps = np.zeros((n, s, s), np.float32)
    own_scores: list[np.ndarray] = []
    extras: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        out = method.predict(prepared.images[sl], prepared.masks[sl], seed=seed)
        if out.pseudo_healthy is not None:
            if ph is None:
                ph = np.zeros((n, s, s), np.float32)
            ph[sl] = out.pseudo_healthy
        maps[sl] = postprocess_residual(out.residual, prepared.masks[sl])
        if out.image_score is not None:
            own_scores.append(np.asarray(out.image_score, np.float64))
        for k, v in out.extra_maps.items():
            extras.setdefault(k, []).append(np.asarray(v, np.float32))
        if progress is not None:
            progress(min(start + batch, n), n)
    elapsed = time.perf_counter() - t0
    raw = np.concatenate(own_scores) if own_scores else image_score_from_map(maps, prepared.masks)
    return MethodResult(
        method=method.name,
        pseudo_healthy=ph,
        anomaly_map=maps,
        scores=slice_scores(raw, prepared.masks, method.calibration),
        raw_scores=raw,
        valid=np.asarray(prepared.valid, bool),
        ms_per_slice=1000 * elapsed / max(n, 1),
        checkpoint_hash=method.checkpoint_hash,
        calibration=method.calibration,
        extra_maps={k: np.concatenate(v) for k, v in extras.items()},
    )
