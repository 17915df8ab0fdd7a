"""DICOM loading: series (files / folder / zip), multi-frame, rescale, MONOCHROME1,
compressed transfer syntaxes, display orientation, several series, privacy."""

from __future__ import annotations

import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from anomaly.errors import CorruptFileError, MultipleSeriesError, ScanLoadError, UnsupportedFileError
from anomaly.io import list_series, load_scan
from anomaly.io.dicom import read_dataset
from anomaly.keys import content_hash

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "assets" / "dicom" / "brain_pd_series"
SERIES_FILES = sorted(SERIES.glob("*.dcm"))


def dicom_data(name: str) -> Path:
    """A pydicom / pydicom-data test file; skip (never download) when it is missing."""
    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip(f"{name} not available (pydicom-data not installed)")
    return Path(p)


def copy_with(src: Path, dst: Path, **changes) -> Path:
    """Copy a DICOM file, setting header keywords (None deletes the element)."""
    ds = read_dataset(src)
    for tag in [t for t in ds.keys() if t.group == 0]:  # command-set elements cannot be written
        del ds[tag]
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(dst))
    return dst


@pytest.fixture(scope="module")
def series_scan():
    return load_scan(SERIES)


# ----------------------------------------------------------------------------- series


def test_series_folder_is_a_sorted_volume(series_scan):
    s = series_scan
    assert s.shape == (20, 256, 256) and s.voxels.dtype == np.float32
    assert s.source == "dicom" and s.modality == "MR" and s.is_volume and s.known_frame
    assert "axial" in s.orientation and "oblique" in s.orientation
    assert any("reformats of the tilted stack" in n for n in s.notes)
    # in-plane 0.86 mm; slice spacing from positions along the normal (5 mm + 2 mm gap)
    assert s.spacing[1] == pytest.approx(0.859375) and s.spacing[2] == pytest.approx(0.859375)
    assert s.spacing[0] == pytest.approx(6.97, abs=0.05)
    assert s.description == "MR, 20 slices 256x256, 0.86x0.86x7.0 mm"
    assert s.series_description == "FSE PD AXIAL OBL"
    assert s.study_uid and s.content_hash and len(s.content_hash) == 64
    assert s.window is None  # the files store WindowWidth 0: not a valid window
    assert len(s.meta["SOPInstanceUIDs"]) == 20
    assert s.meta["SeriesInstanceUID"].endswith("5754.12432")
    assert s.meta["MRAcquisitionType"] == "2D" and s.meta["EchoTime"] == 22.0


def test_series_slices_inferior_to_superior(series_scan):
    headers = [read_dataset(p) for p in SERIES_FILES]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert np.all(np.diff([p[2] for p in series_scan.meta["ImagePositionPatient"]]) > 0)
    by_z = [headers[i] for i in np.argsort(z)]
    for k in (0, 7, 19):
        np.testing.assert_array_equal(series_scan.voxels[k], by_z[k].pixel_array.astype(np.float32))
        assert series_scan.meta["SOPInstanceUIDs"][k] == by_z[k].SOPInstanceUID


def test_series_as_shuffled_files_and_as_zip_match_folder(series_scan, tmp_path):
    files = [str(p) for p in SERIES_FILES]
    random.Random(0).shuffle(files)
    as_files = load_scan(files)
    np.testing.assert_array_equal(as_files.voxels, series_scan.voxels)
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for p in SERIES_FILES:
            z.write(p, f"DICOM/{p.name}")
    as_zip = load_scan(zpath)
    np.testing.assert_array_equal(as_zip.voxels, series_scan.voxels)
    assert as_zip.spacing == series_scan.spacing
    assert series_scan.content_hash == as_files.content_hash == as_zip.content_hash


def test_positions_decide_order_not_instance_numbers(series_scan, tmp_path):
    for i, p in enumerate(SERIES_FILES):
        copy_with(p, tmp_path / p.name, InstanceNumber=100 - i)
    s = load_scan(tmp_path)
    np.testing.assert_array_equal(s.voxels, series_scan.voxels)


def test_instance_number_fallback_without_positions(tmp_path):
    src = SERIES_FILES[:5]
    for i, p in enumerate(src):  # reversed InstanceNumbers, no positions
        copy_with(p, tmp_path / p.name, InstanceNumber=10 - i, ImagePositionPatient=None)
    s = load_scan(tmp_path)
    raw = [read_dataset(p).pixel_array for p in src]
    np.testing.assert_array_equal(s.voxels[0], raw[4].astype(np.float32))
    np.testing.assert_array_equal(s.voxels[4], raw[0].astype(np.float32))
    assert any("InstanceNumber" in n for n in s.notes)
    assert s.spacing[0] == pytest.approx(5.0)  # SliceThickness fallback


def test_dicom_without_suffix_is_recognised_by_content(tmp_path):
    dst = tmp_path / "IM0001"
    shutil.copy(dicom_data("MR_small.dcm"), dst)
    assert load_scan(dst).shape == (1, 64, 64)


def test_junk_files_in_folder_are_ignored_with_a_note(tmp_path):
    for p in SERIES_FILES[:4]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "README.txt").write_text("exported by a viewer")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    s = load_scan(tmp_path)
    assert s.shape == (4, 256, 256)
    assert any("not images" in n for n in s.notes)


# ----------------------------------------------------------------------------- single files


def test_single_2d_file():
    s = load_scan(dicom_data("MR_small.dcm"))
    assert s.shape == (1, 64, 64) and not s.is_volume
    assert s.description == "MR, 2D image 64x64, 0.31x0.31 mm"
    assert s.window == (600.0, 1600.0)
    assert s.known_frame and "axial" in s.orientation


def test_multiframe_emri_small():
    path = dicom_data("emri_small.dcm")
    s = load_scan(path)
    raw = pydicom.dcmread(str(path)).pixel_array
    assert s.shape == (10, 64, 64) and s.is_volume
    np.testing.assert_array_equal(s.voxels, raw.astype(np.float32))
    assert s.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices
    assert any("10 frames" in n for n in s.notes)
    assert not s.known_frame  # no orientation stored


def test_enhanced_multiframe_geometry_sorts_frames(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = dicom_data("emri_small.dcm")
    ds = read_dataset(src)
    raw = ds.pixel_array.astype(np.float32)
    z = [float(v) for v in (45, 40, 35, 30, 25, 20, 15, 10, 5, 0)]  # stored superior -> inferior
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.6]
    shared.PixelMeasuresSequence[0].SliceThickness = 5
    frames = []
    for zi in z:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, zi]
        frames.append(item)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(str(tmp_path / "enhanced.dcm"))
    s = load_scan(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(s.voxels, raw[::-1])  # inferior -> superior
    assert s.spacing == pytest.approx((5.0, 0.5, 0.6)) and s.known_frame
    assert s.meta["frames"] == list(range(10, 0, -1))


def test_ct_rescale_to_hounsfield():
    path = dicom_data("CT_small.dcm")
    ds = pydicom.dcmread(str(path))
    s = load_scan(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(s.voxels[0], expected)
    assert float(ds.RescaleIntercept) == -1024
    assert s.modality == "CT" and s.voxels.min() < -800  # air in HU


def test_monochrome1_is_inverted():
    path = dicom_data("RG1_UNCR.dcm")
    ds = pydicom.dcmread(str(path))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float32)
    s = load_scan(path)
    v = s.voxels[0]
    np.testing.assert_allclose(v, raw.min() + raw.max() - raw)
    assert any("MONOCHROME1" in n for n in s.notes)
    h, w = v.shape
    lungs = [v[int(0.3 * h): int(0.5 * h), int(a * w): int(b * w)].mean() for a, b in ((0.2, 0.35), (0.65, 0.8))]
    mediastinum = v[int(0.3 * h): int(0.5 * h), int(0.45 * w): int(0.55 * w)].mean()
    assert max(lungs) < mediastinum  # air dark, mediastinum bright after inversion
    c, width = s.window
    assert width == 30000 and c == pytest.approx(raw.min() + raw.max() - 15000)


# decoder each transfer syntax goes through: RLE (pydicom/pylibjpeg-rle), JPEG-LS and
# JPEG lossless (pylibjpeg-libjpeg), JPEG 2000 (pylibjpeg-openjpeg / Pillow)
LOSSLESS_TWINS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("JPEG2000.dcm", "JPEG2000_UNC.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),
]


@pytest.mark.parametrize("compressed,plain", LOSSLESS_TWINS)
def test_lossless_compressed_matches_uncompressed_twin(compressed, plain):
    a, b = load_scan(dicom_data(compressed)), load_scan(dicom_data(plain))
    np.testing.assert_array_equal(a.voxels, b.voxels)
    assert a.meta["TransferSyntax"] != b.meta["TransferSyntax"]


@pytest.mark.parametrize("compressed,plain", [
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm"),  # JPEG baseline, YBR
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb.dcm"),  # JPEG-LS near-lossless
    ("US1_J2KI.dcm", "US1_UNCI.dcm"),  # lossy JPEG 2000, YBR_ICT
])
def test_lossy_compressed_is_close_to_twin(compressed, plain):
    a, b = load_scan(dicom_data(compressed)).voxels, load_scan(dicom_data(plain)).voxels
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 2.0 and np.abs(a - b).max() < 8.0


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_undecodable_pixel_data_is_a_clear_error(name):
    with pytest.raises(CorruptFileError, match="could not be decoded") as e:
        load_scan(dicom_data(name))
    assert name in str(e.value)


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(str(dicom_data("MR_small_RLE.dcm")))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.save_as(str(tmp_path / "video.dcm"))
    with pytest.raises(UnsupportedFileError, match="MPEG2") as e:
        load_scan(tmp_path / "video.dcm")
    assert "video.dcm" in str(e.value)


def test_segmentation_object_is_not_an_image():
    with pytest.raises(UnsupportedFileError, match="without an image"):
        load_scan(dicom_data("liver.dcm"))


# ----------------------------------------------------------------------------- orientation


def test_flipped_row_direction_is_mirrored_to_display(tmp_path):
    src = dicom_data("MR_small.dcm")
    raw = pydicom.dcmread(str(src)).pixel_array.astype(np.float32)
    p = copy_with(src, tmp_path / "flip.dcm", ImageOrientationPatient=[-1, 0, 0, 0, 1, 0])
    s = load_scan(p)
    np.testing.assert_array_equal(s.voxels[0], raw[:, ::-1])
    assert s.meta["display_transform"]["flip_cols"] and s.known_frame


def test_transposed_axial_is_transposed_to_display(tmp_path):
    src = dicom_data("MR_small.dcm")
    raw = pydicom.dcmread(str(src)).pixel_array.astype(np.float32)
    p = copy_with(src, tmp_path / "tr.dcm", ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(load_scan(p).voxels[0], raw.T)


def test_reversed_slice_normal_still_inferior_to_superior(series_scan, tmp_path):
    # rows flipped (column direction -y): normal points down; display must still match
    for p in SERIES_FILES:
        iop = [float(x) for x in pydicom.dcmread(str(p), stop_before_pixels=True).ImageOrientationPatient]
        copy_with(p, tmp_path / p.name, ImageOrientationPatient=iop[:3] + [-x for x in iop[3:]])
    s = load_scan(tmp_path)
    np.testing.assert_array_equal(s.voxels, series_scan.voxels[:, ::-1, :])
    assert np.all(np.diff([q[2] for q in s.meta["ImagePositionPatient"]]) > 0)


def test_coronal_is_kept_as_stored(tmp_path):
    src = dicom_data("MR_small.dcm")
    raw = pydicom.dcmread(str(src)).pixel_array.astype(np.float32)
    p = copy_with(src, tmp_path / "cor.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    s = load_scan(p)
    np.testing.assert_array_equal(s.voxels[0], raw)
    assert "coronal" in s.orientation and "as stored" in s.orientation and not s.known_frame


# ----------------------------------------------------------------------------- several series


def _two_series_zip(tmp_path: Path) -> tuple[Path, str, str]:
    second = tmp_path / "second"
    uid = pydicom.uid.generate_uid()
    for p in SERIES_FILES[:3]:
        copy_with(p, second / p.name, SeriesInstanceUID=uid, SeriesDescription="SECOND COPY",
                  SOPInstanceUID=pydicom.uid.generate_uid())
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for p in SERIES_FILES:
            z.write(p, f"a/{p.name}")
        for p in sorted(second.iterdir()):
            z.write(p, f"b/{p.name}")
    first_uid = str(pydicom.dcmread(str(SERIES_FILES[0]), stop_before_pixels=True).SeriesInstanceUID)
    return zpath, first_uid, uid


def test_two_series_need_a_choice(tmp_path):
    zpath, first_uid, second_uid = _two_series_zip(tmp_path)
    with pytest.raises(MultipleSeriesError) as e:
        load_scan(zpath)
    series = e.value.series
    from anomaly.keys import series_key

    k1, k2 = series_key(first_uid), series_key(second_uid)
    assert set(series) == {k1, k2}  # the chooser names series by salted keys: no UID reaches a page or API client
    assert first_uid not in str(e.value) + str(series) and second_uid not in str(series)
    assert "20 images" in series[k1] and "256x256" in series[k1] and "MR" in series[k1]
    assert "3 images" in series[k2] and "SECOND COPY" in series[k2]
    assert list_series(zpath) == series
    assert load_scan(zpath, series_uid=k2).shape == (3, 256, 256)
    assert load_scan(zpath, series_uid=first_uid).shape == (20, 256, 256)  # a UID (scripts) still works
    with pytest.raises(MultipleSeriesError):
        load_scan(zpath, series_uid="1.2.3.4")


def test_list_series_single_and_non_dicom():
    assert list(list_series(SERIES).values()) == ['MR, "FSE PD AXIAL OBL", series 2, 20 images, 256x256']
    assert list_series(ROOT / "assets" / "templates" / "colin27_t1_1mm.nii.gz") == {}


# ----------------------------------------------------------------------------- privacy


NAME, PID = "Doe^Janet", "PID-4711-XYZ"


def _all_text(scan) -> str:
    return " ".join([repr(scan), scan.description, scan.series_description, repr(scan.meta), " ".join(scan.notes)])


def test_no_patient_identifiers_in_scan(tmp_path):
    p = copy_with(dicom_data("MR_small.dcm"), tmp_path / "named.dcm", PatientName=NAME, PatientID=PID,
                  PatientBirthDate="19700101")
    s = load_scan(p)
    text = _all_text(s)
    for ident in (NAME, "Janet", PID, "19700101"):
        assert ident.lower() not in text.lower()
    assert s.study_uid  # kept (for the salted key only), not in repr
    assert s.study_uid not in repr(s)


def test_identifiers_are_scrubbed_from_free_text(tmp_path):
    p = copy_with(dicom_data("MR_small.dcm"), tmp_path / "named.dcm", PatientName=NAME, PatientID=PID,
                  SeriesDescription=f"T1 janet doe {PID}")
    s = load_scan(p)
    for ident in ("Janet", PID):
        assert ident.lower() not in _all_text(s).lower()
        assert ident.lower() not in " ".join(list_series(p).values()).lower()
    assert s.series_description.startswith("T1")


def test_errors_are_typed(tmp_path):
    bad = tmp_path / "half.dcm"
    data = SERIES_FILES[3].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanLoadError):
        load_scan([bad, *SERIES_FILES[:3]])


def test_content_hash_of_single_file():
    path = dicom_data("MR_small.dcm")
    assert load_scan(path).content_hash == content_hash(path)


def test_one_slice_of_an_oblique_series_says_nothing_of_reformats():
    one = load_scan([str(next(iter(sorted((ROOT / "assets/dicom/brain_pd_series").glob("*.dcm")))))])
    assert any("acquired oblique" in n for n in one.notes) and not any("reformat" in n for n in one.notes)


def test_every_pydicom_data_file_loads_or_gets_a_typed_message():
    """All of pydicom's and pydicom-data's test files (CT, MR, PET, US, RT, SR, multi-frame, JPEG, JPEG 2000,
    JPEG-LS, RLE, deflated, big endian, truncated, DICOMDIR folders, ...): each loads, or is refused with a
    ``ScanLoadError`` naming it; no other exception escapes the loader."""
    import warnings

    from pydicom.data import get_testdata_files

    files = get_testdata_files()
    if len(files) < 100:
        pytest.skip("pydicom-data not installed")
    loaded, refused, escaped = 0, 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            try:
                scan = load_scan(f)
                assert scan.n_slices >= 1 and np.isfinite(scan.voxels).all()
                loaded += 1
            except ScanLoadError as e:
                named = str(e).split(":")[0].split(" ")[0]  # the file, or for a folder a file in it
                assert named == Path(f).name or (Path(f).is_dir() and any(Path(f).rglob(named))), (f, str(e))
                refused += 1
            except Exception as e:  # noqa: BLE001 - what the test is looking for
                escaped.append((Path(f).name, type(e).__name__, str(e)[:120]))
    assert not escaped, escaped
    assert loaded > 100 and refused > 50
