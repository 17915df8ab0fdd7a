"""Evaluation metrics: small pure functions around scikit-learn.

Image level (one score per image/slice): ``image_auroc``, ``image_ap``,
``sensitivity_at_specificity``, with ``bootstrap_ci`` for confidence intervals and
``paired_bootstrap`` for the difference between two methods scored on the same images.
Pixel level (maps against lesion masks, optionally only inside brain masks):
``pixel_auroc``, ``pixel_ap``, ``best_dice``, ``dice_at_threshold`` and ``dice``;
``paired_pixel_ap_bootstrap`` for the pixel-AP difference of two methods, resampling images.

Conventions:

* higher score / map value = more anomalous; label 1 = anomalous, 0 = normal;
* an undefined metric (one class only, no pixels, empty prediction and target)
  is ``NaN``, never an exception;
* a pixel is predicted anomalous when its map value is strictly above the threshold
  (``map > thr``), in ``dice_at_threshold`` and ``best_dice`` alike;
* ``best_dice`` and ``dice_at_threshold`` are data-set-level Dice scores: true
  positives, false positives and false negatives are summed over all images first
  (the figure reported by e.g. Baur et al. 2021), not averaged per image.

``masks``/``maps``/``brain_masks`` may be one array (N, H, W) or a sequence of arrays
of different sizes (one per image); they are flattened and concatenated pixel-wise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

# scikit-learn is imported inside the functions: importing it costs about a second, which
# callers that only validate input (the evaluate CLI on bad input) should not pay.

MAX_PIXELS = 5_000_000  # pixel metrics subsample (deterministically) above this many pixels
_SUBSAMPLE_SEED = 0
NAN = float("nan")


# ----------------------------------------------------------------------------- helpers


def _labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0/1) and scores of the images with a finite score.

    A NaN score (an image the method did not score, e.g. the on-demand diffusion model's subset)
    is left out, and so is its image: callers say how many were scored (``evaluate``'s
    ``n_scored``). Labels must be 0 or 1: an unknown label (-1) is the caller's to drop, not a
    normal image (ValueError otherwise)."""
    y = np.asarray(labels).astype(np.float64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y[np.isfinite(y)], (0.0, 1.0)).all():
        raise ValueError("image labels must be 0 (normal) or 1 (anomalous); drop unknown ones first")
    keep = np.isfinite(y) & np.isfinite(s)
    return (y[keep] > 0).astype(np.int8), s[keep]


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def _flat(arrays, dtype) -> np.ndarray:
    if isinstance(arrays, np.ndarray):
        return np.asarray(arrays, dtype).ravel()
    parts = [np.asarray(a, dtype).ravel() for a in arrays]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def pixel_values(masks, maps, brain_masks=None, max_pixels: int | None = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(labels int8, values float32) of all pixels (inside ``brain_masks`` if given).

    Above ``max_pixels`` pixels, a fixed-seed random subset of that size is returned
    (deterministic: the same inputs always give the same subset).
    """
    if isinstance(masks, np.ndarray) and isinstance(maps, np.ndarray) and masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if not isinstance(masks, np.ndarray) and not isinstance(maps, np.ndarray):
        for i, (a, b) in enumerate(zip(masks, maps)):
            if np.shape(a) != np.shape(b):
                raise ValueError(f"mask {i} {np.shape(a)} and map {i} {np.shape(b)} differ in shape")
    y = _flat(masks, bool)
    v = _flat(maps, np.float32)
    if y.shape != v.shape:
        raise ValueError(f"masks ({y.size} pixels) and maps ({v.size} pixels) differ in size")
    if brain_masks is not None:
        b = _flat(brain_masks, bool)
        if b.shape != y.shape:
            raise ValueError(f"brain masks ({b.size} pixels) and masks ({y.size} pixels) differ in size")
        y, v = y[b], v[b]
    finite = np.isfinite(v)
    if not finite.all():
        y, v = y[finite], v[finite]
    if max_pixels is not None and y.size > max_pixels:
        idx = np.sort(np.random.default_rng(_SUBSAMPLE_SEED).choice(y.size, int(max_pixels), replace=False))
        y, v = y[idx], v[idx]
    return y.astype(np.int8), v


# ----------------------------------------------------------------------------- image level


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN with only one class."""
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return NAN
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def image_ap(labels, scores) -> float:
    """Average precision (area under the precision-recall curve, sklearn's step rule); NaN with one class."""
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return NAN
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def sensitivity_at_specificity(labels, scores, specificity: float = 0.95) -> float:
    """The highest true-positive rate over thresholds whose specificity is >= ``specificity``.

    Ties in the score are never split: a threshold classifies all equal scores alike.
    NaN with one class.
    """
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return NAN
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = fpr <= (1.0 - specificity) + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _binary_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, true positives) at each distinct score threshold, highest first."""
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    idx = np.r_[np.nonzero(np.diff(ss))[0], len(ys) - 1]
    tps = np.cumsum(ys)[idx].astype(np.float64)
    return 1 + idx - tps, tps


def _fast_auroc(y, s) -> float:
    y, s = _labels_scores(y, s)
    if not _two_classes(y):
        return NAN
    fps, tps = _binary_curve(y, s)
    fpr, tpr = np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _fast_ap(y, s) -> float:
    y, s = _labels_scores(y, s)
    if not _two_classes(y):
        return NAN
    fps, tps = _binary_curve(y, s)
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _fast_sensitivity(y, s, specificity: float = 0.95) -> float:
    y, s = _labels_scores(y, s)
    if not _two_classes(y):
        return NAN
    fps, tps = _binary_curve(y, s)
    fpr, tpr = np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
    return float(tpr[fpr <= (1.0 - specificity) + 1e-12].max())


# numpy equivalents (same tie handling, same results) used inside the bootstrap loop,
# where scikit-learn's per-call validation (~1-3 ms) would dominate the run time
_FAST = {image_auroc: _fast_auroc, image_ap: _fast_ap, sensitivity_at_specificity: _fast_sensitivity}


def _fast_equivalent(fn: Callable) -> Callable:
    if fn in _FAST:
        return _FAST[fn]
    if isinstance(fn, functools.partial) and fn.func in _FAST:
        return functools.partial(_FAST[fn.func], *fn.args, **fn.keywords)
    return fn


def _clusters(groups, m: int) -> tuple[np.ndarray, int] | None:
    """(cluster index of each of the ``m`` images, number of clusters) of ``groups`` (one label per
    image, e.g. its subject), or None for ``groups=None`` (every image its own cluster)."""
    if groups is None:
        return None
    g = np.asarray(groups, dtype=object).ravel()
    if len(g) != m:
        raise ValueError(f"groups and labels differ in length: {len(g)} vs {m}")
    _, code = np.unique(g.astype(str), return_inverse=True)
    return code.ravel(), int(code.max()) + 1 if m else 0


def _draw_counts(rng: np.random.Generator, m: int, clusters: tuple[np.ndarray, int] | None) -> np.ndarray:
    """How many times each of ``m`` images is drawn in one resample: images drawn with replacement,
    or, with ``clusters``, whole clusters drawn with replacement (an image counts as often as its
    cluster is drawn)."""
    if clusters is None:
        return np.bincount(rng.integers(0, m, m), minlength=m)
    code, k = clusters
    return np.bincount(rng.integers(0, k, k), minlength=k)[code]


def _two_class_resamples(labels: np.ndarray, n: int, seed: int, groups=None):
    """Indices of ``n`` bootstrap resamples of the images (seeded), skipping those with one class.

    With ``groups`` (one label per image) the resampling unit is the group: each resample draws
    as many groups as there are, with replacement, and takes all images of each (a cluster
    bootstrap: slices of one subject are not independent)."""
    yb = np.asarray(labels, np.float64) > 0
    m = len(yb)
    rng = np.random.default_rng(seed)
    clusters = _clusters(groups, m)
    for _ in range(int(n)):
        if clusters is None:
            idx = rng.integers(0, m, m)
        else:
            idx = np.repeat(np.arange(m), _draw_counts(rng, m, clusters))
        k = int(yb[idx].sum())
        if 0 < k < len(idx):
            yield idx


def bootstrap_ci(fn: Callable, labels, scores, n: int = 1000, seed: int = 0,
                 alpha: float = 0.05, groups=None) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``fn(labels, scores)``, resampling images (or,
    with ``groups``, whole groups of images such as a subject's slices).

    Resamples with a single class (or a NaN metric) are skipped. Deterministic for a
    given ``seed``. ``(nan, nan)`` when no resample is usable or ``n`` is 0.
    The metrics of this module (also as ``functools.partial``) run through exact numpy
    equivalents here for speed.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, np.float64)
    m = len(y)
    if n <= 0 or m == 0:
        return (NAN, NAN)
    fn = _fast_equivalent(fn)
    vals = []
    for idx in _two_class_resamples(y, n, seed, groups):
        v = fn(y[idx], s[idx])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return (NAN, NAN)
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


class PairedDifference(NamedTuple):
    """``metric(a) - metric(b)`` on the same images, with a paired percentile-bootstrap CI.

    ``share_not_better``: the fraction of usable resamples in which a does not beat b
    (difference <= 0), a one-sided bootstrap p-value for "a is better than b".
    """

    difference: float
    low: float
    high: float
    share_not_better: float


_NO_DIFFERENCE = PairedDifference(NAN, NAN, NAN, NAN)


def _paired_summary(point: float, diffs: list[float], alpha: float) -> PairedDifference:
    if not np.isfinite(point) or not diffs:
        return PairedDifference(point if np.isfinite(point) else NAN, NAN, NAN, NAN)
    d = np.asarray(diffs)
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return PairedDifference(float(point), float(lo), float(hi), float(np.mean(d <= 0)))


def paired_bootstrap(fn: Callable, labels, scores_a, scores_b, n: int = 1000, seed: int = 0,
                     alpha: float = 0.05, groups=None) -> PairedDifference:
    """``fn(labels, scores_a) - fn(labels, scores_b)`` with a paired bootstrap over images (or,
    with ``groups``, over whole groups of images, as ``bootstrap_ci``).

    Each resample draws the same images for both score vectors, so what the two methods share
    (the same hard normals, the same invisible lesions) cancels, and the CI is that of the
    difference itself, far narrower than two overlapping marginal CIs suggest. Resamples with
    one class (or a NaN metric) are skipped; deterministic for a given ``seed``.
    """
    y = np.asarray(labels)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"labels and scores differ in length: {len(y)}, {len(a)}, {len(b)}")
    fast = _fast_equivalent(fn)
    point = fast(y, a) - fast(y, b) if len(y) else NAN
    if n <= 0 or len(y) == 0:
        return _paired_summary(point, [], alpha)
    diffs = []
    for idx in _two_class_resamples(y, n, seed, groups):
        d = fast(y[idx], a[idx]) - fast(y[idx], b[idx])
        if np.isfinite(d):
            diffs.append(d)
    return _paired_summary(point, diffs, alpha)


class _BinnedPixelCounts:
    """Lesion and healthy pixel counts per image and per value bin, for a fast pixel-AP bootstrap.

    An image drawn k times in a resample counts its pixels k times, so a resample's pixel AP
    needs only ``counts @ table``: no re-sorting of a million pixels per resample. Values are
    cut at up to ``n_bins`` quantiles (values within a bin count as tied), which moves the AP
    by far less than the resampling does.
    """

    def __init__(self, y: np.ndarray, v: np.ndarray, image_of: np.ndarray, n_images: int, n_bins: int):
        edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])) if len(v) else np.zeros(0)
        b = np.searchsorted(edges, v, side="left")
        nb = len(edges) + 1
        flat = image_of * nb + b
        size = n_images * nb
        self.lesion = np.bincount(flat, weights=y, minlength=size).reshape(n_images, nb)[:, ::-1]
        self.pixels = np.bincount(flat, minlength=size).astype(np.float64).reshape(n_images, nb)[:, ::-1]

    def ap(self, image_counts: np.ndarray) -> float:
        """AP over the pixels with each image weighted by its count (bins highest first)."""
        tps = np.cumsum(image_counts @ self.lesion)
        alls = np.cumsum(image_counts @ self.pixels)
        if len(tps) == 0 or tps[-1] <= 0 or tps[-1] >= alls[-1]:
            return NAN
        precision = np.divide(tps, alls, out=np.zeros_like(tps), where=alls > 0)
        return float(np.sum(np.diff(np.r_[0.0, tps / tps[-1]]) * precision))


def paired_pixel_ap_bootstrap(masks: Sequence[np.ndarray], maps_a: Sequence[np.ndarray],
                              maps_b: Sequence[np.ndarray], n: int = 1000, seed: int = 0,
                              alpha: float = 0.05, n_bins: int = 10_000, groups=None) -> PairedDifference:
    """Pixel AP of ``maps_a`` minus that of ``maps_b`` (same pixels), bootstrap over images (or,
    with ``groups``, one label per image, over whole groups of images).

    ``masks``, ``maps_a``, ``maps_b``: one array of pixel labels/values per image (any shapes,
    the same within an image; e.g. the brain pixels of each masked slice). Images, not pixels,
    are resampled (pixels of one image are not independent). The difference itself is exact
    (as ``pixel_ap``); the resampled ones use ``n_bins`` value bins per method for speed.
    NaN without lesion pixels.
    """
    if not (len(masks) == len(maps_a) == len(maps_b)):
        raise ValueError("masks and maps differ in number of images")
    if len(masks) == 0:
        return _NO_DIFFERENCE
    y = _flat(masks, np.int8).astype(np.float64)
    va, vb = _flat(maps_a, np.float64), _flat(maps_b, np.float64)
    if not (len(y) == len(va) == len(vb)):
        raise ValueError("masks and maps differ in number of pixels")
    point = _fast_ap(y, va) - _fast_ap(y, vb)
    if n <= 0 or not np.isfinite(point):
        return _paired_summary(point, [], alpha)
    image_of = np.concatenate([np.full(np.asarray(m).size, i, np.int64) for i, m in enumerate(masks)])
    ta = _BinnedPixelCounts(y, va, image_of, len(masks), n_bins)
    tb = _BinnedPixelCounts(y, vb, image_of, len(masks), n_bins)
    # binning ties values within a bin, which lowers AP a little; the resampled differences are
    # shifted by what binning does to the difference on the data as drawn, so the interval is
    # centred on the exact difference, not on the binned one
    ones = np.ones(len(masks))
    shift = point - (ta.ap(ones) - tb.ap(ones))
    rng = np.random.default_rng(seed)
    clusters = _clusters(groups, len(masks))
    diffs = []
    for _ in range(int(n)):
        counts = _draw_counts(rng, len(masks), clusters).astype(np.float64)
        d = ta.ap(counts) - tb.ap(counts) + shift
        if np.isfinite(d):
            diffs.append(d)
    return _paired_summary(point, diffs, alpha)


# ----------------------------------------------------------------------------- pixel level


def pixel_auroc(masks, maps, brain_masks=None) -> float:
    """ROC AUC over pixels (inside ``brain_masks`` if given); NaN with one class."""
    y, v = pixel_values(masks, maps, brain_masks)
    if not _two_classes(y):
        return NAN
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, v))


def pixel_ap(masks, maps, brain_masks=None) -> float:
    """Average precision over pixels (inside ``brain_masks`` if given); NaN with one class."""
    y, v = pixel_values(masks, maps, brain_masks)
    if not _two_classes(y):
        return NAN
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, v))


def dice(pred, target) -> float:
    """2|P & T| / (|P| + |T|) of two boolean arrays; NaN when both are empty."""
    p = np.asarray(pred, bool)
    t = np.asarray(target, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return NAN
    return float(2 * np.logical_and(p, t).sum() / denom)


def _dice_counts(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def dice_at_threshold(masks, maps, thr: float, brain_masks=None) -> float:
    """Data-set-level Dice of ``maps > thr`` against ``masks`` (inside ``brain_masks`` if given).

    NaN when neither the prediction nor the masks hold a pixel. Uses every pixel (no subsampling).
    """
    y, v = pixel_values(masks, maps, brain_masks, max_pixels=None)
    if not np.isfinite(thr):
        return NAN
    p = v.astype(np.float64) > float(thr)  # in float64, as dice_curve compares (not float32)
    t = y.astype(bool)
    tp = int(np.count_nonzero(p & t))
    return float(_dice_counts(tp, int(p.sum()) - tp, int(t.sum()) - tp))


def _dice_curve_values(y: np.ndarray, v: np.ndarray, n_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    if v.size == 0:
        return np.zeros(0), np.zeros(0)
    lo, hi = float(v.min()), float(v.max())
    thr = np.linspace(lo, hi, max(int(n_thresholds), 1)) if hi > lo else np.array([lo])
    # k(v) = number of thresholds strictly below v, so v > thr[j] exactly for j < k(v)
    k = np.searchsorted(thr, v, side="left")
    t = y.astype(bool)
    pos = np.bincount(k[t], minlength=len(thr) + 1)
    neg = np.bincount(k[~t], minlength=len(thr) + 1)
    # pixels above thr[j] = pixels with k > j
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    fn = int(t.sum()) - tp
    return thr, _dice_counts(tp, fp, fn)


def dice_curve(masks, maps, n_thresholds: int = 100, brain_masks=None) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, data-set-level Dice at each threshold) for ``n_thresholds`` evenly spaced
    thresholds from the lowest to the highest map value (prediction: ``map > threshold``).

    Vectorised: each pixel is binned once by ``searchsorted`` and the per-bin counts are
    accumulated, so the cost is one pass over the pixels whatever ``n_thresholds`` is.
    """
    y, v = pixel_values(masks, maps, brain_masks, max_pixels=None)
    return _dice_curve_values(y, v, n_thresholds)


def best_dice_threshold(masks, maps, n_thresholds: int = 100, brain_masks=None) -> tuple[float, float]:
    """(best data-set-level Dice over thresholds, the threshold reaching it).

    ``(nan, nan)`` if the masks hold no lesion pixel.
    """
    y, v = pixel_values(masks, maps, brain_masks, max_pixels=None)
    if not y.any():
        return (NAN, NAN)
    thr, d = _dice_curve_values(y, v, n_thresholds)
    if d.size == 0 or not np.isfinite(d).any():
        return (NAN, NAN)
    i = int(np.nanargmax(d))
    return (float(d[i]), float(thr[i]))


def best_dice(masks, maps, n_thresholds: int = 100, brain_masks=None) -> float:
    """Max over ``n_thresholds`` thresholds of the data-set-level Dice (the figure papers report).

    An optimistic upper bound: the threshold is chosen on the test data itself. NaN if the
    masks hold no lesion pixel.
    """
    return best_dice_threshold(masks, maps, n_thresholds, brain_masks)[0]


__all__ = [
    "image_auroc", "image_ap", "sensitivity_at_specificity", "bootstrap_ci", "paired_bootstrap",
    "paired_pixel_ap_bootstrap", "PairedDifference",
    "pixel_auroc", "pixel_ap", "dice", "best_dice", "best_dice_threshold", "dice_curve",
    "dice_at_threshold", "pixel_values", "MAX_PIXELS",
]

