"""NIfTI (.nii / .nii.gz, 2D/3D/4D, orientation) and PNG / JPEG / TIFF loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from anomaly.errors import UnsupportedFileError
from anomaly.io import load_scan
from anomaly.keys import content_hash
from anomaly.scan import ras_to_display

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "assets" / "templates"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def nib_data(name: str) -> Path:
    p = NIB_DATA / name
    if not p.exists():
        pytest.skip(f"nibabel test file {name} not installed")
    return p


def brain_slice() -> np.ndarray:
    """A real axial slice (uint8) of the MNI152 template."""
    s = load_scan(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")
    return s.voxels[95].astype(np.uint8)


# ----------------------------------------------------------------------------- NIfTI


def test_anatomical_nii_canonical_display():
    path = nib_data("anatomical.nii")
    s = load_scan(path)
    canon = nib.as_closest_canonical(nib.load(path))
    expected = ras_to_display(canon.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(s.voxels, expected)
    assert s.shape == (25, 41, 33) and s.spacing == (2.0, 2.0, 2.0)
    assert s.source == "nifti" and s.known_frame and s.is_volume
    assert s.modality == "unknown"  # NIfTI carries no modality
    assert s.meta["original_axcodes"] == "LAS"
    assert s.content_hash == content_hash(path)


def test_template_display_directions_in_world_space():
    path = TEMPLATES / "itk_subject_t1_2x2x3mm.nii.gz"  # stored L-S-A: needs reorientation
    s = load_scan(path)
    canon = nib.as_closest_canonical(nib.load(path))
    i_n, j_n, k_n = canon.shape[:3]

    def world(sl, row, col):  # display (s, h, w) -> RAS voxel (I-1-w, J-1-h, s) -> mm
        return canon.affine @ np.array([i_n - 1 - col, j_n - 1 - row, sl, 1.0])

    a, b = world(0, 0, 0), world(s.shape[0] - 1, s.shape[1] - 1, s.shape[2] - 1)
    assert a[0] > b[0]  # column 0 is the patient's right (x larger in RAS)
    assert a[1] > b[1]  # row 0 is anterior
    assert a[2] < b[2]  # slice 0 is inferior
    assert s.shape == (k_n, j_n, i_n)
    zooms = canon.header.get_zooms()[:3]
    assert s.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]))


def test_mni_template_loads_as_1mm_volume():
    s = load_scan(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")
    assert s.shape == (189, 233, 197) and s.spacing == (1.0, 1.0, 1.0)
    assert s.modality == "MR"  # hinted by 't1' in the file name
    assert s.description == "NIfTI MR, 189 slices 233x197, 1.00x1.00x1.0 mm"


def test_4d_nifti_first_volume_with_note():
    path = nib_data("example4d.nii.gz")
    s = load_scan(path)
    img = nib.as_closest_canonical(nib.load(path))
    expected = ras_to_display(np.asarray(img.dataobj[..., 0], dtype=np.float32))
    np.testing.assert_allclose(s.voxels, expected)
    assert "4D file with 2 volumes: showing volume 1" in s.notes
    assert s.spacing == pytest.approx((2.2, 2.0, 2.0), abs=1e-4)


def test_nifti2_loads():
    s = load_scan(nib_data("example_nifti2.nii.gz"))
    assert s.meta["format"] == "NIfTI-2" and s.shape == (12, 20, 32)


def test_2d_nifti_is_not_a_volume(tmp_path):
    img = brain_slice().T[::-1, ::-1].astype(np.float32)  # (x, y) in RAS from display
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img), np.eye(4)), tmp_path / "slice.nii")
    s = load_scan(tmp_path / "slice.nii")
    assert not s.is_volume and s.shape == (1,) + brain_slice().shape
    np.testing.assert_array_equal(s.voxels[0], brain_slice().astype(np.float32))


def test_single_coronal_slice_nifti(tmp_path):
    data = np.random.default_rng(0).random((30, 1, 20), dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "cor.nii.gz")
    s = load_scan(tmp_path / "cor.nii.gz")
    assert s.shape == (1, 20, 30) and not s.is_volume and "coronal" in s.orientation


def test_nifti_is_recognised_by_content_and_hinted_by_name(tmp_path):
    dst = tmp_path / "sub-01_T1w.nii.gz"
    shutil.copy(TEMPLATES / "colin27_t1_1mm.nii.gz", dst)
    assert load_scan(dst).modality == "MR"
    odd = tmp_path / "upload_without_suffix"
    shutil.copy(nib_data("anatomical.nii"), odd)
    assert load_scan(odd).shape == (25, 41, 33)


def test_nifti_scaling_is_applied(tmp_path):
    data = np.arange(16 * 16 * 4, dtype=np.int16).reshape(16, 16, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, tmp_path / "scaled.nii")
    s = load_scan(tmp_path / "scaled.nii")
    assert s.voxels.min() == -5.0 and s.voxels.max() == 2.0 * data.max() - 5.0


# ----------------------------------------------------------------------------- raster


def test_png_8bit(tmp_path):
    img = brain_slice()
    Image.fromarray(img).save(tmp_path / "slice.png")
    s = load_scan(tmp_path / "slice.png")
    np.testing.assert_array_equal(s.voxels[0], img.astype(np.float32))
    assert not s.is_volume and not s.known_frame and s.modality == "unknown"
    assert s.spacing == (1.0, 1.0, 1.0) and s.source == "png"


def test_png_16bit(tmp_path):
    img = brain_slice().astype(np.uint16) * 250
    Image.fromarray(img).save(tmp_path / "slice16.png")
    s = load_scan(tmp_path / "slice16.png")
    np.testing.assert_array_equal(s.voxels[0], img.astype(np.float32))
    assert s.voxels.max() > 255


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_png_becomes_luminance(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.quantize(64)
    im.save(tmp_path / "c.png")
    ref = np.asarray(im.convert("RGB")).astype(np.float32)
    expected = 0.299 * ref[..., 0] + 0.587 * ref[..., 1] + 0.114 * ref[..., 2]
    s = load_scan(tmp_path / "c.png")
    assert s.shape == (1, 40, 48)
    np.testing.assert_allclose(s.voxels[0], expected, atol=1e-3)


def test_jpeg(tmp_path):
    img = brain_slice()
    Image.fromarray(img).save(tmp_path / "slice.jpg", quality=95)
    s = load_scan(tmp_path / "slice.jpg")
    assert s.shape == (1,) + img.shape and s.source == "jpeg"
    assert np.abs(s.voxels[0] - img).mean() < 3


def test_tiff_single_and_multipage(tmp_path):
    img = brain_slice()
    Image.fromarray(img.astype(np.uint16) * 100).save(tmp_path / "one.tif")
    one = load_scan(tmp_path / "one.tif")
    np.testing.assert_array_equal(one.voxels[0], img.astype(np.float32) * 100)
    pages = [Image.fromarray(np.roll(img, k, axis=0)) for k in range(3)]
    pages[0].save(tmp_path / "stack.tiff", save_all=True, append_images=pages[1:])
    s = load_scan(tmp_path / "stack.tiff")
    assert s.shape == (3,) + img.shape and s.is_volume and not s.known_frame
    np.testing.assert_array_equal(s.voxels[2], np.roll(img, 2, axis=0).astype(np.float32))
    assert any("multi-page TIFF" in n for n in s.notes)
    assert any("areas and extents are in pixels" in n for n in one.notes) and not one.spacing_known


def test_several_separate_images_are_refused(tmp_path):
    Image.fromarray(brain_slice()).save(tmp_path / "a.png")
    Image.fromarray(brain_slice()).save(tmp_path / "b.png")
    with pytest.raises(UnsupportedFileError, match="one scan at a time"):
        load_scan([tmp_path / "a.png", tmp_path / "b.png"])


def test_nifti_display_range_becomes_window(tmp_path):
    img = nib.Nifti1Image(np.arange(16 * 16 * 2, dtype=np.float32).reshape(16, 16, 2), np.eye(4))
    img.header["cal_min"], img.header["cal_max"] = 100.0, 300.0
    nib.save(img, tmp_path / "cal.nii")
    assert load_scan(tmp_path / "cal.nii").window == (200.0, 200.0)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.eye(4)), tmp_path / "nocal.nii")
    assert load_scan(tmp_path / "nocal.nii").window is None
