"""Synthetic T1 lesions (anomaly.data.lesions) on real MNI152 anatomy."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from anomaly.data.lesions import CONTRAST_ENHANCED, CONTRAST_NATIVE, LESION_KINDS, LesionInfo, add_lesion, render_lesion_gallery

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "assets" / "templates"
MEDIUM = {"tumour": 20.0, "tumour_enhancing": 22.0, "wm_lesions": 10.0, "stroke": 30.0, "haemorrhage": 18.0}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mni():
    """MNI152 2009a T1 with its GM/WM maps, loaded once: a 1 mm sub-volume through the
    ventricles (70 slices, cropped to the brain) and a 2 mm version of the whole brain."""
    from anomaly.data.folder import read_image

    t1 = read_image(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")
    wm = read_image(TEMPLATES / "mni152_2009a_wm_1mm.nii.gz") / 255.0
    gm = read_image(TEMPLATES / "mni152_2009a_gm_1mm.nii.gz") / 255.0
    crop = (slice(50, 120), slice(20, 212), slice(20, 178))
    d2 = (slice(None, None, 2),) * 3
    out = {
        "v1": np.ascontiguousarray(t1[crop]),
        "wm1": np.ascontiguousarray(wm[crop]),
        "gm1": np.ascontiguousarray(gm[crop]),
        "v2": np.ascontiguousarray(t1[d2]),
        "wm2": np.ascontiguousarray(wm[d2]),
        "gm2": np.ascontiguousarray(gm[d2]),
        "slice": np.ascontiguousarray(t1[80]),
        "slice_wm": np.ascontiguousarray(wm[80]),
        "slice_gm": np.ascontiguousarray(gm[80]),
    }
    for k in ("v1", "v2", "slice"):
        out[k] = out[k].astype(np.float32)
    out["b1"] = out["v1"] > 0
    out["b2"] = out["v2"] > 0
    out["slice_b"] = out["slice"] > 0
    v, wmv, gmv = out["v1"], out["wm1"], out["gm1"]
    out["WM"] = float(np.mean(v[wmv > 0.9]))
    out["GM"] = float(np.mean(v[gmv > 0.9]))
    return out


@pytest.fixture(scope="module")
def medium(mni):
    """One lesion of each kind (medium size) on the 1 mm sub-volume, computed once."""
    res = {}
    for i, kind in enumerate(LESION_KINDS):
        before = mni["v1"].copy()
        new, mask, info = add_lesion(mni["v1"], mni["b1"], kind, MEDIUM[kind], np.random.default_rng(100 + i), wm_prob=mni["wm1"], gm_prob=mni["gm1"])
        assert np.array_equal(before, mni["v1"]), "the input volume was modified"
        res[kind] = (new, mask, info)
    return res


def feret(mask, spacing):
    """Exact largest diameter (mm) of the union of voxel boxes (independent of the module)."""
    m = np.asarray(mask, bool)
    if m.ndim == 2:
        m = m[None]
        spacing = (1.0,) + tuple(spacing)
    sp = np.asarray(spacing, float)
    b = m & ~ndi.binary_erosion(m) if m.shape[0] > 1 else m
    pts = np.argwhere(b) * sp
    corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3))) * sp
    if m.shape[0] == 1:
        corners = corners[corners[:, 0] < 0]
        corners[:, 0] = 0.0
    allp = (pts[:, None, :] + corners[None]).reshape(-1, 3)
    if m.shape[0] == 1:
        hull = ConvexHull(allp[:, 1:])
    else:
        hull = ConvexHull(allp)
    return float(pdist(allp[hull.vertices]).max())


def largest_component_diameter(mask, spacing):
    lab, n = ndi.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    return max(feret(lab == i, spacing) for i in range(1, n + 1))


# ----------------------------------------------------------------------------- API basics


def test_kinds_and_info_type(medium):
    assert LESION_KINDS == ("tumour", "tumour_enhancing", "wm_lesions", "stroke", "haemorrhage")
    for kind, (new, mask, info) in medium.items():
        assert isinstance(info, LesionInfo)
        assert info.kind == kind
        assert info.contrast == (CONTRAST_ENHANCED if kind == "tumour_enhancing" else CONTRAST_NATIVE)
        assert len(info.centre) == 3 and all(isinstance(c, int) for c in info.centre)
        assert new.dtype == np.float32 and mask.dtype == bool
        if kind == "wm_lesions":
            assert 3 <= info.n_components <= 12
        else:
            assert info.n_components == 1


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_deterministic_given_the_seed(mni, kind):
    args = (mni["v2"], mni["b2"], kind, 16.0)
    kw = dict(spacing=(2.0, 2.0, 2.0), wm_prob=mni["wm2"], gm_prob=mni["gm2"])
    a = add_lesion(*args, np.random.default_rng(5), **kw)
    b = add_lesion(*args, np.random.default_rng(5), **kw)
    c = add_lesion(*args, np.random.default_rng(6), **kw)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_mask_inside_brain_nonempty_and_finite(medium, mni):
    for kind, (new, mask, info) in medium.items():
        assert mask.any(), kind
        assert not (mask & ~mni["b1"]).any(), kind
        assert mask[info.centre], kind
        assert np.isfinite(new).all(), kind
        # voxels outside the brain are untouched
        assert np.array_equal(new[~mni["b1"]], mni["v1"][~mni["b1"]]), kind


def test_invalid_arguments(mni):
    v, b = mni["slice"], mni["slice_b"]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        add_lesion(v, b, "glioma", 10, rng)
    with pytest.raises(ValueError, match="shape"):
        add_lesion(v, b[:-1], "tumour", 10, rng)
    with pytest.raises(ValueError, match="size_mm"):
        add_lesion(v, b, "tumour", 0.0, rng)
    with pytest.raises(ValueError, match="empty"):
        add_lesion(v, np.zeros_like(b), "tumour", 10, rng)
    with pytest.raises(ValueError, match="brain"):
        add_lesion(v, b, "haemorrhage", 10, rng, centre=(0, 0, 0))


def test_centre_is_respected(mni):
    c = (35, 96, 50)  # right hemisphere white matter of the sub-volume
    assert mni["b1"][c] and mni["wm1"][c] > 0.5
    for kind in ("tumour", "haemorrhage", "wm_lesions"):
        new, mask, info = add_lesion(mni["v1"], mni["b1"], kind, 12.0, np.random.default_rng(1), wm_prob=mni["wm1"], gm_prob=mni["gm1"], centre=c)
        assert mask[c], kind
        assert info.centre == c, kind


# ----------------------------------------------------------------------------- where the change is


@pytest.mark.parametrize("kind", ["wm_lesions", "stroke", "haemorrhage"])
def test_change_is_concentrated_in_the_mask(medium, mni, kind):
    new, mask, _ = medium[kind]
    d = np.abs(new - mni["v1"])
    inside = d[mask].mean()
    outside = d[~mask & mni["b1"]].mean()
    assert inside > 15.0
    assert inside > 50 * outside
    # what changes outside is only the soft edge (and a haemorrhage's slight mass effect)
    dist = ndi.distance_transform_edt(~mask)
    assert d[dist > 8].max() < (5.0 if kind == "haemorrhage" else 1e-3)


@pytest.mark.parametrize("kind", ["tumour", "tumour_enhancing"])
def test_tumour_change_outside_the_mask_is_mass_effect_decaying_with_distance(medium, mni, kind):
    new, mask, info = medium[kind]
    d = np.abs(new - mni["v1"])
    b = mni["b1"]
    inside = d[mask].mean()
    dist = ndi.distance_transform_edt(~mask)
    shells = [(0, 4), (4, 10), (10, 20), (20, 40)]
    means = [d[(dist > lo) & (dist <= hi) & b].mean() for lo, hi in shells]
    assert inside > 15.0
    assert inside > 5 * means[0], (inside, means)
    assert means[0] > means[2] > means[3] or means[3] == 0.0, means
    assert means[1] > means[3], means
    # the displacement is tapered to zero: far from the tumour nothing changes at all
    idx = np.indices(mask.shape).reshape(3, -1).T
    r = np.sqrt(((idx - np.array(info.centre)) ** 2).sum(1)).reshape(mask.shape)
    far = r > 3.5 * info.details["core_size_mm"] / 2 + 4
    assert far.any()
    assert d[far].max() == 0.0
    assert info.details["mass_effect_mm"] > 0


# ----------------------------------------------------------------------------- intensities


def test_tumour_is_hypointense_with_oedema(medium, mni):
    new, mask, info = medium["tumour"]
    c = np.array(info.centre)
    idx = np.indices(mask.shape).reshape(3, -1).T
    near = (np.sqrt(((idx - c) ** 2).sum(1)) <= 2.0).reshape(mask.shape) & mask
    assert new[near].mean() < mni["GM"]  # solid core between CSF and GM
    assert new[mask].mean() < mni["WM"]  # the whole abnormal region is darker than WM
    # oedema: white matter in the mask but away from the core is darkened
    wm_mask = mask & (mni["wm1"] > 0.9) & ~near
    assert (new[wm_mask] - mni["v1"][wm_mask]).mean() < -5


def test_enhancing_tumour_has_bright_rim_and_dark_necrosis(medium, mni):
    new, mask, info = medium["tumour_enhancing"]
    assert info.contrast == "T1 contrast-enhanced"
    assert new[mask].max() > mni["WM"] + 0.3 * (mni["WM"] - mni["GM"])
    assert (new[mask] > mni["WM"]).sum() >= 20  # a rim, not a speck
    assert new[mask].min() < mni["GM"]  # necrotic core


def test_haemorrhage_is_brighter_than_white_matter(medium, mni):
    new, mask, _ = medium["haemorrhage"]
    assert new[mask].mean() > mni["WM"]


def test_wm_lesions_are_dark_and_in_white_matter(medium, mni):
    new, mask, info = medium["wm_lesions"]
    assert new[mask].mean() < mni["WM"]
    assert (mni["wm1"][mask] > 0.5).mean() > 0.6
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    assert n == info.n_components
    sizes = [feret(lab == i, (1, 1, 1)) for i in range(1, n + 1)]
    assert max(sizes) <= 1.5 * MEDIUM["wm_lesions"]
    assert min(sizes) >= 1.5  # no single-voxel specks


def test_stroke_is_dark_and_covers_grey_and_white_matter(medium, mni):
    new, mask, _ = medium["stroke"]
    assert new[mask].mean() < mni["GM"]
    assert (mni["gm1"][mask] > 0.5).mean() > 0.1
    assert (mni["wm1"][mask] > 0.5).mean() > 0.1
    # a wedge reaching the cortex: it touches the brain's outer surface
    surface = mni["b1"] & ~ndi.binary_erosion(mni["b1"], iterations=2)
    surface[:2] = surface[-2:] = False
    assert (mask & surface).sum() > 10


def test_lesion_noise_matches_the_image_noise(mni):
    """On a noisy image the lesion carries noise of the same strength as healthy WM."""
    g = np.random.default_rng(0)
    sigma = 8.0
    v = mni["v1"] + (g.standard_normal(mni["v1"].shape) * sigma * mni["b1"]).astype(np.float32)
    new, mask, _ = add_lesion(v, mni["b1"], "haemorrhage", 24.0, np.random.default_rng(3), wm_prob=mni["wm1"], gm_prob=mni["gm1"])
    resid = new - ndi.gaussian_filter(new, 1.0)
    deep = ndi.binary_erosion(mask, iterations=4)
    assert deep.sum() > 100
    ref = ndi.binary_erosion(mni["wm1"] > 0.95, iterations=2) & ~ndi.binary_dilation(mask, iterations=10)
    ratio = resid[deep].std() / resid[ref].std()
    assert 0.7 < ratio < 1.4, ratio


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_size_roughly_as_requested(mni, kind):
    for size in (3.0, 10.0, 25.0, 40.0):
        new, mask, info = add_lesion(mni["v1"], mni["b1"], kind, size, np.random.default_rng(int(size)), wm_prob=mni["wm1"], gm_prob=mni["gm1"])
        d = largest_component_diameter(mask, (1, 1, 1)) if kind == "wm_lesions" else feret(mask, (1, 1, 1))
        assert 0.5 * size <= d <= 1.5 * size, (kind, size, d)
        assert abs(info.size_mm - d) <= 0.2 * d + 1.0, (info.size_mm, d)


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_sizes_are_in_mm_for_anisotropic_voxels(mni, kind):
    from anomaly.data.folder import read_image

    t1 = read_image(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")[::2, ::3, ::2]  # 2 x 3 x 2 mm
    b = t1 > 0
    for size in (12.0, 30.0):
        new, mask, info = add_lesion(t1, b, kind, size, np.random.default_rng(2), spacing=(2.0, 3.0, 2.0))
        d = largest_component_diameter(mask, (2, 3, 2)) if kind == "wm_lesions" else feret(mask, (2, 3, 2))
        assert 0.5 * size <= d <= 1.5 * size, (kind, size, d)
        assert np.isfinite(new).all() and not (mask & ~b).any()


def test_3d_lesions_span_several_slices(medium):
    for kind, (_, mask, info) in medium.items():
        if kind == "wm_lesions":
            lab, _ = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
            mask = lab == lab[info.centre]  # the largest lesion
        n_slices = np.count_nonzero(mask.any(axis=(1, 2)))
        assert n_slices >= 4, (kind, n_slices)


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_2d_image_works(mni, kind):
    v, b = mni["slice"], mni["slice_b"]
    for wm, gm in ((mni["slice_wm"], mni["slice_gm"]), (None, None)):
        new, mask, info = add_lesion(v, b, kind, 15.0, np.random.default_rng(4), wm_prob=wm, gm_prob=gm)
        assert new.shape == v.shape and mask.shape == v.shape
        assert mask.any() and not (mask & ~b).any()
        assert info.centre[0] == 0 and mask[info.centre[1:]]
        assert np.isfinite(new).all()
        d = np.abs(new - v)
        assert d[mask].mean() > 10 * max(d[~mask & b].mean(), 1e-3)


def test_works_without_probability_maps(mni):
    v, b = mni["v1"], mni["b1"]
    new, mask, _ = add_lesion(v, b, "wm_lesions", 8.0, np.random.default_rng(9))
    assert (mni["wm1"][mask] > 0.5).mean() > 0.5
    assert new[mask].mean() < mni["WM"]
    new, mask, _ = add_lesion(v, b, "haemorrhage", 15.0, np.random.default_rng(9))
    assert new[mask].mean() > mni["WM"]
    new, mask, _ = add_lesion(v, b, "tumour", 20.0, np.random.default_rng(9))
    assert new[mask].mean() < mni["WM"]


# ----------------------------------------------------------------------------- gallery


def test_gallery_renders(tmp_path):
    out = tmp_path / "lesions.png"
    infos = render_lesion_gallery(out)
    assert out.exists() and out.stat().st_size > 20_000
    assert [i.kind for i in infos] == list(LESION_KINDS)
