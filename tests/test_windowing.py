"""Window presets (HU), 'auto' / 'file' windows and the uint8 windowing function."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.scan import Scan
from anomaly.windowing import PRESETS, apply_window, auto_window, preset_names, window_for

pytestmark = pytest.mark.timeout(60)


def test_standard_presets():
    # (centre, width) = (level, width): brain W80 L40, subdural W215 L75, soft tissue
    # W400 L50, lung W1500 L-600, bone W1800 L400
    assert PRESETS["brain"] == (40, 80)
    assert PRESETS["subdural"] == (75, 215)
    assert PRESETS["ct soft tissue"] == (50, 400)
    assert PRESETS["lung"] == (-600, 1500)
    assert PRESETS["bone"] == (400, 1800)
    assert PRESETS["stroke"] == (40, 40)
    assert all(w > 0 for _, w in PRESETS.values())


def test_apply_window_maps_range_to_uint8():
    img = np.array([[-1000, 0, 40, 80, 1000, np.nan]], np.float32)
    out = apply_window(img, 40, 80)  # brain window: 0 HU -> black, 80 HU -> white
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128, 255, 255, 0]]
    ramp = apply_window(np.linspace(0, 80, 81), 40, 80)
    assert np.all(np.diff(ramp.astype(int)) >= 0) and ramp[0] == 0 and ramp[-1] == 255


def test_apply_window_zero_width_thresholds():
    assert apply_window(np.array([1.0, 5.0, 9.0]), 5, 0).tolist() == [0, 0, 255]
    with pytest.raises(ValueError):
        apply_window(np.zeros(3), np.nan, 10)


def test_window_for_presets_auto_and_file():
    vox = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    scan = Scan(voxels=vox, modality="CT", window=(300.0, 500.0))
    assert window_for(scan, "Brain") == (40, 80)
    assert window_for(scan, "lung") == (-600, 1500)
    assert window_for(scan, "file") == (300.0, 500.0)
    c, w = window_for(scan, "auto")
    lo, hi = np.percentile(vox, [1, 99])
    assert c == pytest.approx((lo + hi) / 2) and w == pytest.approx(hi - lo)
    with pytest.raises(ValueError, match="unknown window"):
        window_for(scan, "liver-ish")
    # 'auto' on the displayed slice when one is given; HU presets ignore it
    sl = vox[3]
    lo, hi = np.percentile(sl, [1, 99])
    assert window_for(scan, "auto", sl) == pytest.approx(((lo + hi) / 2, hi - lo))
    assert window_for(scan, "bone", sl) == (400, 1800)


def test_hu_presets_apply_to_ct_only():
    """An MR slice under the CT 'brain' preset (40/80 HU) would be white: it gets 'auto' instead."""
    vox = np.random.default_rng(0).normal(400, 100, (4, 16, 16)).astype(np.float32)
    mr = Scan(voxels=vox, modality="MR")
    for preset in ("brain", "Bone", "lung", "subdural"):
        assert window_for(mr, preset, vox[1]) == window_for(mr, "auto", vox[1])
    assert window_for(Scan(voxels=vox, modality="CT"), "brain", vox[1]) == (40, 80)


def test_file_window_falls_back_to_auto():
    vox = np.random.default_rng(0).normal(100, 20, (4, 16, 16)).astype(np.float32)
    scan = Scan(voxels=vox, modality="MR")
    assert window_for(scan, "file") == window_for(scan, "auto")
    scan.window = (10.0, 0.0)  # invalid width
    assert window_for(scan, "file") == window_for(scan, "auto")


def test_auto_window_edge_cases():
    assert auto_window(np.full((4, 4), 3.0)) == (3.0, 1.0)
    assert auto_window(np.full((4, 4), np.nan)) == (0.5, 1.0)
    c, w = auto_window(np.array([0.0] * 98 + [1.0, 1000.0]))
    assert w > 0


def test_preset_names_depend_on_modality():
    mr = Scan(voxels=np.zeros((1, 8, 8)), modality="MR")
    ct = Scan(voxels=np.zeros((1, 8, 8)), modality="CT", window=(40.0, 80.0))
    assert preset_names(mr) == ["auto"]
    assert preset_names(ct)[:2] == ["auto", "file"] and "brain" in preset_names(ct)
