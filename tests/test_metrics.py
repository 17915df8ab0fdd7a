"""anomaly.metrics against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomaly import metrics as M

pytestmark = pytest.mark.timeout(180)

NAN = pytest.approx(float("nan"), nan_ok=True)


# ----------------------------------------------------------------------------- image level


def test_perfect_and_reversed_separation():
    y = [0, 0, 1, 1]
    s = [0.1, 0.2, 0.8, 0.9]
    assert M.image_auroc(y, s) == 1.0
    assert M.image_ap(y, s) == 1.0
    assert M.sensitivity_at_specificity(y, s) == 1.0
    r = [-v for v in s]
    assert M.image_auroc(y, r) == 0.0
    # positives ranked 3rd and 4th: precision 1/3 at recall 1/2, 2/4 at recall 1
    assert M.image_ap(y, r) == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 4))
    assert M.sensitivity_at_specificity(y, r) == 0.0


def test_three_positive_three_negative_case():
    # ranking: 0.9 P, 0.8 N, 0.6 P, 0.5 N, 0.3 P, 0.1 N
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.8, 0.5, 0.1]
    # pairs won by positives: 3 + 2 + 1 of 9
    assert M.image_auroc(y, s) == pytest.approx(6 / 9)
    # precision at each positive: 1/1, 2/3, 3/5
    assert M.image_ap(y, s) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_ties_give_half():
    assert M.image_auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_sensitivity_at_specificity_known_set():
    neg = np.arange(20.0)  # 0..19: one false positive allowed at 95% specificity
    pos = np.array([25, 24, 23, 18.5, 17.5, 10, 5, 3, 2, 1.0])
    y = np.r_[np.zeros(20), np.ones(10)]
    s = np.r_[neg, pos]
    # threshold 18.5 lets in one normal (19) and 4 positives; 17.5 would let in two normals
    assert M.sensitivity_at_specificity(y, s, 0.95) == pytest.approx(0.4)
    # no false positive allowed: only 25, 24, 23 are above every normal
    assert M.sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.3)
    # 10% false positives (2 normals: 18, 19): threshold 17.5 adds 18.5 and 17.5 -> 5 of 10
    assert M.sensitivity_at_specificity(y, s, 0.90) == pytest.approx(0.5)
    assert M.sensitivity_at_specificity(y, s, 0.0) == 1.0


def test_one_class_is_nan_not_an_error():
    for fn in (M.image_auroc, M.image_ap, M.sensitivity_at_specificity):
        assert math.isnan(fn([0, 0, 0], [1, 2, 3]))
        assert math.isnan(fn([1, 1], [1, 2]))
        assert math.isnan(fn([], []))
    assert math.isnan(M.pixel_auroc(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)))
    assert math.isnan(M.pixel_ap(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)))
    assert math.isnan(M.best_dice(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)))


def test_non_finite_scores_are_ignored():
    assert M.image_auroc([0, 1, 0, 1], [0.1, 0.9, np.nan, 0.8]) == 1.0


def test_unknown_labels_are_refused_not_read_as_normal():
    for fn in (M.image_auroc, M.image_ap, M.sensitivity_at_specificity):
        with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
            fn([0, 1, -1, 1], [0.1, 0.9, 0.95, 0.8])
        with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
            fn([0, 2], [0.1, 0.9])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        M.bootstrap_ci(M.image_auroc, [0, 1, -1], [0.1, 0.9, 0.95], n=10)
    assert M.image_auroc([0.0, 1.0, np.nan], [0.1, 0.9, 0.5]) == 1.0  # a NaN label is left out


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        M.image_auroc([0, 1], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------- bootstrap


def _data(n=60, seed=1):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    s = rng.normal(size=n) + 1.2 * y
    return y, s


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, s = _data()
    for fn in (M.image_auroc, M.image_ap, M.sensitivity_at_specificity):
        est = fn(y, s)
        lo, hi = M.bootstrap_ci(fn, y, s, n=300, seed=3)
        assert 0 <= lo <= est <= hi <= 1
        assert (lo, hi) == M.bootstrap_ci(fn, y, s, n=300, seed=3)
    assert M.bootstrap_ci(M.image_auroc, y, s, n=300, seed=3) != M.bootstrap_ci(M.image_auroc, y, s, n=300, seed=4)
    # narrower with a lower confidence level
    lo95, hi95 = M.bootstrap_ci(M.image_auroc, y, s, n=300, seed=3)
    lo50, hi50 = M.bootstrap_ci(M.image_auroc, y, s, n=300, seed=3, alpha=0.5)
    assert lo95 <= lo50 <= hi50 <= hi95


def test_bootstrap_ci_one_class_and_single_class_resamples():
    assert all(math.isnan(v) for v in M.bootstrap_ci(M.image_auroc, [0, 0, 0], [1, 2, 3], n=50))
    assert all(math.isnan(v) for v in M.bootstrap_ci(M.image_auroc, [0, 1], [1, 2], n=0))
    # one positive among 3: many resamples hold a single class and are skipped, not an error
    lo, hi = M.bootstrap_ci(M.image_auroc, [0, 0, 1], [0.1, 0.2, 0.9], n=200, seed=0)
    assert lo == hi == 1.0


def test_paired_bootstrap_is_the_difference_with_a_paired_ci():
    y, s = _data(n=400)
    rng = np.random.default_rng(5)
    weaker = s + rng.normal(0, 1.5, len(s))
    for fn in (M.image_auroc, M.image_ap):
        d = M.paired_bootstrap(fn, y, s, weaker, n=300, seed=2)
        assert d.difference == pytest.approx(fn(y, s) - fn(y, weaker))
        assert d.low <= d.difference <= d.high
        assert d.low > 0 and d.share_not_better < 0.025  # the added noise costs, and the CI says so
        assert d == M.paired_bootstrap(fn, y, s, weaker, n=300, seed=2)
        back = M.paired_bootstrap(fn, y, weaker, s, n=300, seed=2)
        assert back.difference == pytest.approx(-d.difference) and back.share_not_better > 0.975
    same = M.paired_bootstrap(M.image_auroc, y, s, s, n=100)
    assert (same.difference, same.low, same.high, same.share_not_better) == (0.0, 0.0, 0.0, 1.0)
    # the paired CI of a difference is narrower than the marginal CIs suggest (shared hard cases)
    close = s + rng.normal(0, 0.2, len(s))
    d = M.paired_bootstrap(M.image_auroc, y, s, close, n=300, seed=2)
    lo, hi = M.bootstrap_ci(M.image_auroc, y, s, n=300, seed=2)
    assert d.high - d.low < (hi - lo) / 2
    none = M.paired_bootstrap(M.image_auroc, y, s, weaker, n=0)
    assert none.difference == pytest.approx(M.image_auroc(y, s) - M.image_auroc(y, weaker)) and math.isnan(none.low)
    assert all(math.isnan(v) for v in M.paired_bootstrap(M.image_auroc, [0, 0], [1, 2], [2, 1], n=10))
    with pytest.raises(ValueError, match="length"):
        M.paired_bootstrap(M.image_auroc, y, s, s[:-1])


def test_paired_pixel_ap_bootstrap_resamples_images():
    rng = np.random.default_rng(0)
    masks = [rng.random((20, 30)) < 0.08 * (i % 3) for i in range(30)]
    good = [(m * 0.8 + rng.random(m.shape)).astype(np.float32) for m in masks]
    poor = [(m * 0.2 + np.round(rng.random(m.shape), 2)).astype(np.float32) for m in masks]  # with ties
    d = M.paired_pixel_ap_bootstrap(masks, good, poor, n=300, seed=1)
    assert d.difference == pytest.approx(M.pixel_ap(masks, good) - M.pixel_ap(masks, poor), abs=1e-9)
    assert 0 < d.low <= d.difference <= d.high and d.share_not_better == 0.0
    assert d == M.paired_pixel_ap_bootstrap(masks, good, poor, n=300, seed=1)
    assert d != M.paired_pixel_ap_bootstrap(masks, good, poor, n=300, seed=2)
    # the binned resample AP is the exact AP up to ties within a bin
    y = M._flat(masks, np.int8).astype(np.float64)
    image_of = np.concatenate([np.full(m.size, i) for i, m in enumerate(masks)])
    for maps in (good, poor):
        table = M._BinnedPixelCounts(y, M._flat(maps, np.float64), image_of, len(masks), 10_000)
        assert table.ap(np.ones(len(masks))) == pytest.approx(M.pixel_ap(masks, maps), abs=2e-3)
        counts = np.bincount(rng.integers(0, len(masks), len(masks)), minlength=len(masks))
        rs = [k for k in range(len(masks)) for _ in range(counts[k])]
        exact = M.pixel_ap([masks[k] for k in rs], [maps[k] for k in rs])
        assert table.ap(counts.astype(float)) == pytest.approx(exact, abs=2e-3)
    # the interval is centred on the exact difference: binning coarse enough to tie most values
    # lowers both binned APs, and the shift takes that back out of every resample
    coarse = M.paired_pixel_ap_bootstrap(masks, good, poor, n=300, seed=1, n_bins=8)
    assert coarse.difference == d.difference
    binned_point = (M._BinnedPixelCounts(y, M._flat(good, np.float64), image_of, len(masks), 8).ap(np.ones(len(masks)))
                    - M._BinnedPixelCounts(y, M._flat(poor, np.float64), image_of, len(masks), 8).ap(np.ones(len(masks))))
    assert abs(binned_point - d.difference) > 0.01  # the binning's bias is real at 8 bins
    assert coarse.low < d.difference < coarse.high
    assert abs((coarse.low + coarse.high) / 2 - d.difference) < abs((coarse.low + coarse.high) / 2 - binned_point)
    assert math.isnan(M.paired_pixel_ap_bootstrap([np.zeros((4, 4), bool)], [np.ones((4, 4))], [np.ones((4, 4))]).difference)
    assert math.isnan(M.paired_pixel_ap_bootstrap([], [], []).difference)
    with pytest.raises(ValueError, match="number of images"):
        M.paired_pixel_ap_bootstrap(masks, good, poor[:-1])


# ----------------------------------------------------------------------------- pixel level


def test_dice_of_known_masks():
    assert M.dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert M.dice([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert M.dice([1, 1, 0, 0], [0, 0, 1, 1]) == 0.0
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16 px
    b[4:8, 4:8] = True  # 16 px, overlap 2x2 = 4
    assert M.dice(a, b) == pytest.approx(2 * 4 / 32)
    assert math.isnan(M.dice(np.zeros(4), np.zeros(4)))


def test_dice_at_threshold_and_brain_mask():
    masks = np.array([[1, 1, 0, 0]], bool)
    maps = np.array([[0.9, 0.4, 0.6, 0.1]])
    assert M.dice_at_threshold(masks, maps, 0.5) == pytest.approx(0.5)  # pred 1010
    assert M.dice_at_threshold(masks, maps, 0.3) == pytest.approx(0.8)  # pred 1110: 2*2/(3+2)
    assert M.dice_at_threshold(masks, maps, 0.9) == 0.0  # strictly above: nothing predicted
    brain = np.array([[1, 1, 0, 1]], bool)
    assert M.dice_at_threshold(masks, maps, 0.3, brain) == 1.0


def test_dice_at_threshold_compares_as_dice_curve_does():
    # float32 maps against a float64 threshold a hair below a float32 value: the comparison is
    # made in float64, as dice_curve's, so 1.0f is above 0.9999999735 (in float32 it would tie)
    masks = np.array([[1, 0, 0, 0]], bool)
    maps = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)
    assert M.dice_at_threshold(masks, maps, 0.9999999735) == pytest.approx(2 / 3)
    thr, d = M.dice_curve(masks, maps, n_thresholds=2)
    assert M.dice_at_threshold(masks, maps, float(thr[0])) == pytest.approx(d[0])


def test_best_dice_known_case_and_matches_brute_force():
    masks = np.array([[1, 1, 0, 0]], bool)
    assert M.best_dice(masks, np.array([[0.9, 0.8, 0.2, 0.1]])) == 1.0
    d, thr = M.best_dice_threshold(masks, np.array([[0.9, 0.8, 0.2, 0.1]]))
    assert 0.2 <= thr < 0.8 and d == 1.0
    rng = np.random.default_rng(0)
    m = rng.random((5, 20, 20)) < 0.1
    v = rng.random((5, 20, 20)) + 0.5 * m
    brain = rng.random((5, 20, 20)) < 0.9
    thr_grid, curve = M.dice_curve(m, v, 37, brain)
    brute = [M.dice_at_threshold(m, v, t, brain) for t in thr_grid]
    np.testing.assert_allclose(curve, brute)
    assert M.best_dice(m, v, 37, brain) == pytest.approx(max(brute))


def test_pixel_metrics_over_images_of_different_sizes():
    masks = [np.array([[1, 0], [0, 0]], bool), np.array([[0, 0, 1]], bool)]
    maps = [np.array([[0.9, 0.1], [0.2, 0.3]]), np.array([[0.4, 0.5, 0.8]])]
    # positives 0.9, 0.8; negatives 0.1, 0.2, 0.3, 0.4, 0.5: perfect
    assert M.pixel_auroc(masks, maps) == 1.0
    assert M.pixel_ap(masks, maps) == 1.0
    # inside a brain mask that drops the 0.9 lesion pixel: 0.8 vs negatives still perfect
    brain = [np.array([[0, 1], [1, 1]], bool), np.array([[1, 1, 1]], bool)]
    assert M.pixel_auroc(masks, maps, brain) == 1.0
    # a negative (0.85) above one positive (0.8)
    maps2 = [np.array([[0.9, 0.1], [0.2, 0.85]]), np.array([[0.4, 0.5, 0.8]])]
    # pairs: 0.9 beats 5, 0.8 beats 4 of 5 -> 9/10
    assert M.pixel_auroc(masks, maps2) == pytest.approx(0.9)


def test_pixel_values_subsample_is_deterministic_and_bounded():
    rng = np.random.default_rng(0)
    m = rng.random((4, 50, 50)) < 0.05
    v = rng.random((4, 50, 50)).astype(np.float32)
    y1, v1 = M.pixel_values(m, v, max_pixels=1000)
    y2, v2 = M.pixel_values(m, v, max_pixels=1000)
    assert len(y1) == 1000 and np.array_equal(y1, y2) and np.array_equal(v1, v2)
    y3, _ = M.pixel_values(m, v, max_pixels=None)
    assert len(y3) == m.size
    with pytest.raises(ValueError, match="differ"):
        M.pixel_values(m, v[:2])


def test_bootstrap_fast_path_equals_scikit_learn():
    import functools

    rng = np.random.default_rng(5)
    for trial in range(30):
        n = int(rng.integers(4, 40))
        y = rng.random(n) < rng.uniform(0.2, 0.8)
        if not 0 < y.sum() < n:
            continue
        s = np.round(rng.normal(size=n) + y, 1)  # rounded: many ties
        assert M._fast_auroc(y, s) == pytest.approx(M.image_auroc(y, s))
        assert M._fast_ap(y, s) == pytest.approx(M.image_ap(y, s))
        for spec in (0.8, 0.95, 1.0):
            assert M._fast_sensitivity(y, s, spec) == pytest.approx(M.sensitivity_at_specificity(y, s, spec))
    part = functools.partial(M.sensitivity_at_specificity, specificity=0.9)
    assert M._fast_equivalent(part)(y, s) == pytest.approx(part(y, s))
    # a function the module does not know is used as given
    own = lambda a, b: float(np.mean(b))  # noqa: E731
    assert M._fast_equivalent(own) is own


def test_volume_percentile_compares_a_maximum_with_healthy_maxima():
    """The highest of n slice scores ranks against the highest of n healthy slices: a healthy volume
    whose top slice sits at the 99th percentile of single slices is unremarkable over 80 slices."""
    from anomaly.calibration import volume_percentile, volume_percentile_ceiling

    assert volume_percentile(100.0, 80) == 100.0 and volume_percentile(0.0, 5) == 0.0
    assert volume_percentile(50.0, 1) == pytest.approx(50.0)
    assert volume_percentile(99.0, 80) == pytest.approx(100 * 0.99 ** 80) and volume_percentile(99.0, 80) < 50
    rng = np.random.default_rng(0)  # simulated: maxima of 80 healthy draws land uniformly on 0-100
    healthy = rng.normal(size=100_000)
    pcts = []
    for _ in range(400):
        top = rng.normal(size=80).max()
        pcts.append(volume_percentile(100.0 * (healthy < top).mean(), 80))
    assert abs(np.mean(pcts) - 50) < 5 and abs(np.mean(np.asarray(pcts) >= 95) - 0.05) < 0.04
    assert np.isnan(volume_percentile(float("nan"), 10)) and np.isnan(volume_percentile(50.0, 0))
    # above all of m healthy slices: the most m slices can tell of n, (m + 1) / (m + n + 1), not a
    # certain 100th percentile; a small calibration set does not collapse it to "very normal"
    assert volume_percentile(100.0, 90, 158) == pytest.approx(100 * 159 / 249) and volume_percentile(100.0, 90, 158) < 70
    assert volume_percentile(100.0, 66, 12) == pytest.approx(100 * 13 / 79)  # was (12/13)^66: 0.5
    assert volume_percentile_ceiling(66, 12) == pytest.approx(100 * 13 / 79)
    assert np.isnan(volume_percentile_ceiling(66, 0))
    assert volume_percentile(50.0, 1, 158) == pytest.approx(50.0)
    # with many healthy slices it approaches the independent-draws figure; lower ranks read lower
    assert volume_percentile(99.0, 80, 100_000) == pytest.approx(100 * 0.99 ** 80, rel=0.01)
    vals = [volume_percentile(p, 66, 158) for p in (0, 50, 90, 99, 100)]
    assert vals == sorted(vals) and vals[0] < 1e-6
    # simulated with a small calibration set: a volume's figure is at most its rank among healthy
    # volume maxima on average (it errs low, not high)
    cal = rng.normal(size=(300, 12))
    pcts = []
    for c in cal:
        top = rng.normal(size=66).max()
        pcts.append(volume_percentile(100.0 * (c < top).mean(), 66, 12))
    assert 0 < np.mean(pcts) <= 55


def test_cluster_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(3)
    y = np.tile([0, 1], 60)
    s = y * 0.5 + rng.random(120)
    one_each = [f"{i:03d}" for i in range(120)]  # every image its own group: the image bootstrap
    assert M.bootstrap_ci(M.image_auroc, y, s, n=200, seed=4, groups=one_each) == M.bootstrap_ci(
        M.image_auroc, y, s, n=200, seed=4)
    # 6 subjects whose lesions are easy in three and invisible in three: resampling subjects sees
    # that the figure rests on 6 subjects, resampling slices takes the 60 lesion slices as independent
    subject = np.repeat(np.arange(6), 20)
    s_subj = rng.random(120) + y * np.repeat([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 20)
    lo, hi = M.bootstrap_ci(M.image_auroc, y, s_subj, n=300, seed=1)
    glo, ghi = M.bootstrap_ci(M.image_auroc, y, s_subj, n=300, seed=1, groups=subject)
    assert ghi - glo > 1.3 * (hi - lo)
    b = rng.random(120)
    d = M.paired_bootstrap(M.image_auroc, y, s_subj, b, n=300, seed=1)
    dg = M.paired_bootstrap(M.image_auroc, y, s_subj, b, n=300, seed=1, groups=subject)
    assert dg.difference == d.difference and dg.high - dg.low > d.high - d.low
    # pixel AP: a group's images are drawn together
    masks = [rng.random((8, 8)) < 0.1 for _ in range(12)]
    a_maps = [m + rng.random(m.shape) for m in masks]
    b_maps = [rng.random(m.shape) for m in masks]
    pg = M.paired_pixel_ap_bootstrap(masks, a_maps, b_maps, n=100, seed=0, groups=np.repeat([0, 1, 2], 4))
    assert pg.difference == M.paired_pixel_ap_bootstrap(masks, a_maps, b_maps, n=0).difference
    assert pg.low <= pg.difference <= pg.high
    p1 = M.paired_pixel_ap_bootstrap(masks, a_maps, b_maps, n=100, seed=0, groups=[f"{i:02d}" for i in range(12)])
    assert p1 == M.paired_pixel_ap_bootstrap(masks, a_maps, b_maps, n=100, seed=0)
    with pytest.raises(ValueError, match="groups and labels differ"):
        M.bootstrap_ci(M.image_auroc, y, s, n=10, groups=subject[:-1])
