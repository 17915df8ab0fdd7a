"""Where a slice lies in the patient frame (``Scan.affine``, ``Scan.slice_label``): the same anatomy
stored in another voxel order gives the same display and the same positions."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from anomaly.io import load_scan

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "assets" / "dicom" / "brain_pd_series"
TEMPLATE = ROOT / "assets" / "templates" / "itk_subject_t1_2x2x3mm.nii.gz"


@pytest.fixture(scope="module")
def series_scan():
    return load_scan(SERIES)


def _read(p: Path) -> pydicom.Dataset:
    """A file of the series, its command-set elements dropped (they cannot be written back)."""
    ds = pydicom.dcmread(str(p))
    for tag in [t for t in ds.keys() if t.group == 0]:
        del ds[tag]
    return ds


def _rewrite(src_dir: Path, dst_dir: Path, change) -> Path:
    """Each file of the series re-encoded by ``change(ds, pixels) -> pixels`` (header edits in place)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(src_dir.glob("*.dcm")):
        ds = _read(p)
        px = np.ascontiguousarray(change(ds, ds.pixel_array))
        ds.Rows, ds.Columns = px.shape
        ds.PixelData = px.astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(str(dst_dir / p.name))
    return dst_dir


def test_display_axes_point_the_radiological_way(series_scan):
    """Slices run inferior -> superior, rows anterior -> posterior, columns patient right -> left."""
    for s in (series_scan, load_scan(TEMPLATE)):
        a = s.affine
        assert a is not None and a.shape == (4, 4)
        assert a[2, 0] > 0  # +slice: superior
        assert a[1, 1] < 0  # +row: posterior (y anterior)
        assert a[0, 2] < 0  # +column: towards the patient's left (x to the right)


def test_dicom_positions_are_the_files_positions(series_scan):
    """The affine puts each slice's first stored pixel at its ImagePositionPatient (LPS -> RAS)."""
    ipp = np.asarray(series_scan.meta["ImagePositionPatient"], float)
    t = series_scan.meta["display_transform"]
    assert not any(t.values())  # this series is stored in display order: stored (0, 0) is display (0, 0)
    for s in range(series_scan.n_slices):  # the affine's slice step is the mean one (0.06 mm off here)
        world = series_scan.affine @ np.array([s, 0, 0, 1.0])
        np.testing.assert_allclose(world[:3], ipp[s] * [-1, -1, 1], atol=0.1)
        # the label uses the slice's own position: its corner's z plus the tilt across half the slice
        h, w = series_scan.shape[1:]
        z = ipp[s][2] + series_scan.affine[2, 1] * (h - 1) / 2 + series_scan.affine[2, 2] * (w - 1) / 2
        assert series_scan.slice_label(s).startswith(f"{'S' if z >= 0 else 'I'} {abs(z):.1f} mm")


def test_same_anatomy_flipped_columns_gives_same_display_and_positions(series_scan, tmp_path):
    """Pixels mirrored left-right with the row direction reversed and the origin moved to the other
    corner is the same image: the loader must show it the same and place it the same."""
    def mirror(ds, px):
        iop = [float(x) for x in ds.ImageOrientationPatient]
        ipp = np.asarray([float(x) for x in ds.ImagePositionPatient])
        ipp = ipp + (int(ds.Columns) - 1) * float(ds.PixelSpacing[1]) * np.asarray(iop[:3])
        ds.ImageOrientationPatient = [-x for x in iop[:3]] + iop[3:]
        ds.ImagePositionPatient = [float(x) for x in ipp]
        return px[:, ::-1]

    s = load_scan(_rewrite(SERIES, tmp_path / "mirrored", mirror))
    assert s.meta["display_transform"]["flip_cols"]
    np.testing.assert_array_equal(s.voxels, series_scan.voxels)
    np.testing.assert_allclose(s.affine, series_scan.affine, atol=1e-3)
    assert [s.slice_label(i) for i in (0, 7, 19)] == [series_scan.slice_label(i) for i in (0, 7, 19)]


def test_same_anatomy_transposed_gives_same_display_and_positions(series_scan, tmp_path):
    def transpose(ds, px):
        iop = [float(x) for x in ds.ImageOrientationPatient]
        ds.ImageOrientationPatient = iop[3:] + iop[:3]
        ds.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]
        return px.T

    s = load_scan(_rewrite(SERIES, tmp_path / "transposed", transpose))
    assert s.meta["display_transform"]["transposed"]
    np.testing.assert_array_equal(s.voxels, series_scan.voxels)
    np.testing.assert_allclose(s.affine, series_scan.affine, atol=1e-3)


def test_dicom_slice_label_names_position_and_instance(series_scan, tmp_path):
    labels = [series_scan.slice_label(i) for i in range(series_scan.n_slices)]
    z = [float(lb.split(" mm")[0].split(" ")[1]) * (1 if lb.startswith("S") else -1) for lb in labels]
    assert np.all(np.diff(z) > 0)  # inferior -> superior
    # instance numbers follow the files, not the display order: shuffle them and they move with their files
    inst = {}
    for i, p in enumerate(sorted(SERIES.glob("*.dcm"))):
        ds = _read(p)
        ds.InstanceNumber = 100 + (i * 7) % 20
        ds.save_as(str(tmp_path / p.name))
        inst[tuple(round(float(x), 3) for x in ds.ImagePositionPatient)] = ds.InstanceNumber
    s = load_scan(tmp_path)
    for i, pos in enumerate(s.meta["ImagePositionPatient"]):
        assert s.slice_label(i).endswith(f"instance {inst[tuple(round(x, 3) for x in pos)]}")


def test_nifti_in_another_voxel_order_gives_same_positions(tmp_path):
    """The template re-saved in LPI voxel order (axes flipped, affine adjusted): same display, same
    affine, and labels such as 'S 12.0 mm'."""
    img = nib.load(str(TEMPLATE))
    data = np.asarray(img.dataobj)
    flip = nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]), data.shape)
    other = nib.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1, :]), img.affine @ flip)
    nib.save(other, tmp_path / "flipped.nii.gz")
    a, b = load_scan(TEMPLATE), load_scan(tmp_path / "flipped.nii.gz")
    np.testing.assert_array_equal(a.voxels, b.voxels)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    for plane, letters in (("axial", "SI"), ("coronal", "AP"), ("sagittal", "RL")):
        lb = a.slice_label(3, plane)
        assert lb == b.slice_label(3, plane) and lb[0] in letters and lb.endswith(" mm")
    # the centre of slice 3 of each plane, through the affine, is the stated position
    centre = a.affine @ np.array([3, (a.shape[1] - 1) / 2, (a.shape[2] - 1) / 2, 1.0])
    assert a.slice_label(3) == f"{'S' if centre[2] >= 0 else 'I'} {abs(centre[2]):.1f} mm"


def test_no_position_without_a_patient_frame():
    png = load_scan(ROOT / "assets" / "examples" / "healthy_stripped_t1_axial.png")
    assert png.affine is None and png.slice_label(0) == ""
    assert "affine" not in repr(png) and "patient frame known" in repr(load_scan(TEMPLATE))


def test_volumes_the_project_writes_have_their_origin_at_the_centre(tmp_path):
    """A volume written by the data-set writer (and the bundled examples) reads as offsets from its
    centre: the middle slices are at 0 mm, the first sagittal slice on the patient's right."""
    from anomaly.data.folder import write_image

    v = np.random.default_rng(0).random((11, 20, 30)).astype(np.float32)
    s = load_scan(write_image(tmp_path, "v", v, spacing=(3.0, 2.0, 1.0)))
    np.testing.assert_array_equal(s.voxels, v)
    assert s.slice_label(5) == "S 0.0 mm" and s.slice_label(0) == "I 15.0 mm"
    assert s.slice_label(0, "sagittal") == "R 14.5 mm" and s.slice_label(29, "sagittal") == "L 14.5 mm"
    assert s.slice_label(0, "coronal") == "A 19.0 mm"
    ex = load_scan(ROOT / "assets" / "examples" / "synthetic_haemorrhage_t1.nii.gz")
    mid = ex.shape[2] // 2
    assert ex.slice_label(mid, "sagittal") in ("R 1.0 mm", "L 1.0 mm", "R 0.0 mm")


def test_a_point_maps_between_planes_and_back():
    """A pixel of a coronal or sagittal slice is the display voxel that ``Scan.slice`` shows there."""
    from anomaly.scan import Scan, plane_point_to_voxel, voxel_to_plane_point

    v = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    s = Scan(v)
    for plane in ("axial", "coronal", "sagittal"):
        for index, row, col in ((0, 0, 0), (2, 3, 4), (1, 4, 2)):
            sl = s.slice(index, plane)
            if row >= sl.shape[0] or col >= sl.shape[1]:
                continue
            z, h, w = (int(x) for x in plane_point_to_voxel(plane, index, row, col, s.shape))
            assert v[z, h, w] == sl[row, col], (plane, index, row, col)
            assert voxel_to_plane_point((z, h, w), plane, s.shape) == (index, row, col)
