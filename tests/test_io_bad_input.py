"""Bad uploads: each raises the specific typed error with a message naming the file."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from anomaly.errors import (
    CorruptFileError,
    EmptyFileError,
    FileTooLargeError,
    InvalidImageError,
    ScanLoadError,
    UnsafeArchiveError,
    UnsupportedFileError,
)
from anomaly.io import list_series, load_scan

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "assets" / "dicom" / "brain_pd_series"
DCM = SERIES / "brain_002.dcm"


def nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def brain(shape=(24, 24, 6)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32) * 100


# ----------------------------------------------------------------------------- DICOM


def test_truncated_dicom(tmp_path):
    data = DCM.read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="cut.dcm") as e:
        load_scan(bad)
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)


def test_dicom_cut_inside_header(tmp_path):
    bad = tmp_path / "head.dcm"
    bad.write_bytes(DCM.read_bytes()[:600])
    with pytest.raises(CorruptFileError, match="head.dcm"):
        load_scan(bad)


def test_text_renamed_dcm(tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("Patient notes, not an image.\n" * 20)
    with pytest.raises(UnsupportedFileError, match=r"notes\.dcm is not a DICOM file"):
        load_scan(bad)


def test_dicom_too_large_when_decoded(tmp_path):
    import pydicom

    ds = pydicom.dcmread(str(DCM), stop_before_pixels=False)
    for tag in [t for t in ds.keys() if t.group == 0]:
        del ds[tag]
    ds.Rows, ds.Columns = 8192, 8192  # declares 128 MB of pixels
    ds.save_as(str(tmp_path / "huge.dcm"))
    with pytest.raises(FileTooLargeError, match="huge.dcm"):
        load_scan(tmp_path / "huge.dcm", max_bytes=64 * 1024 * 1024)


# ----------------------------------------------------------------------------- generic


@pytest.mark.parametrize("name", ["empty.dcm", "empty.nii.gz", "empty.png", "noext"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(EmptyFileError, match=name):
        load_scan(tmp_path / name)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(EmptyFileError, match="gone.nii"):
        load_scan(tmp_path / "gone.nii")
    (tmp_path / "folder").mkdir()
    with pytest.raises(EmptyFileError, match="folder"):
        load_scan(tmp_path / "folder")
    with pytest.raises(EmptyFileError):
        load_scan([])


def test_file_over_max_bytes(tmp_path):
    with pytest.raises(FileTooLargeError, match="brain_002.dcm"):
        load_scan(DCM, max_bytes=100_000)


@pytest.mark.parametrize("name", ["scan.mgz", "report.pdf", "data.txt"])
def test_unsupported_types(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x01\x02\x03 some bytes \x00" * 10)
    with pytest.raises(UnsupportedFileError, match=name.replace(".", r"\.")):
        load_scan(tmp_path / name)


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz", "scan.png", "scan.jpg", "scan.tif"])
def test_binary_garbage_with_image_suffix(tmp_path, name):
    (tmp_path / name).write_bytes(os.urandom(4000))
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
        load_scan(tmp_path / name)


# ----------------------------------------------------------------------------- archives


def test_zip_with_parent_path_member(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(DCM, "ok/brain_002.dcm")
        z.writestr("../evil.dcm", DCM.read_bytes())
    with pytest.raises(UnsafeArchiveError, match="evil.zip"):
        load_scan(zpath)
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_with_absolute_member(tmp_path):
    zpath = tmp_path / "abs.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        info = zipfile.ZipInfo("placeholder")
        info.filename = "/tmp/abs_evil.dcm"  # ZipInfo() strips a leading '/', set it directly
        z.writestr(info, b"x")
    with pytest.raises(UnsafeArchiveError, match="abs.zip"):
        load_scan(zpath)


def test_zip_bomb(tmp_path):
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("zeros.dcm", b"\x00" * (20 * 1024 * 1024))
    assert zpath.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        load_scan(zpath, max_bytes=5 * 1024 * 1024)


def test_zip_too_large_but_not_a_bomb(tmp_path):
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        z.writestr("noise.bin", os.urandom(300_000))
    with pytest.raises(FileTooLargeError, match="big.zip"):
        load_scan(zpath, max_bytes=200_000)


def test_corrupt_zip(tmp_path):
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(SERIES.glob("brain_00[2-4].dcm")):
            z.write(p, p.name)
    data = zpath.read_bytes()
    zpath.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="series.zip"):
        load_scan(zpath)


def test_zip_without_images(tmp_path):
    zpath = tmp_path / "docs.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("a.txt", "hello")
        z.writestr("b.csv", "1,2,3")
    with pytest.raises(UnsupportedFileError, match="docs.zip"):
        load_scan(zpath)


# ----------------------------------------------------------------------------- pixel sanity


def test_nifti_with_some_nans_loads_with_note(tmp_path):
    data = brain()
    data[3:6, 3:6, 2] = np.nan
    data[0, 0, 0] = np.inf
    s = load_scan(nifti(tmp_path / "nans.nii", data))
    assert np.isfinite(s.voxels).all() and s.voxels.dtype == np.float32
    assert any("10 non-finite voxels" in n for n in s.notes)


def test_all_nan_nifti(tmp_path):
    with pytest.raises(InvalidImageError, match=r"allnan\.nii.*no finite values"):
        load_scan(nifti(tmp_path / "allnan.nii", np.full((16, 16, 4), np.nan, np.float32)))


def test_constant_images(tmp_path):
    with pytest.raises(InvalidImageError, match=r"flat\.nii\.gz.*constant"):
        load_scan(nifti(tmp_path / "flat.nii.gz", np.full((16, 16, 4), 7.0, np.float32)))
    Image.fromarray(np.full((32, 32), 120, np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(InvalidImageError, match=r"grey\.png.*constant"):
        load_scan(tmp_path / "grey.png")


def test_one_pixel_png(tmp_path):
    Image.fromarray(np.array([[200]], np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(InvalidImageError, match=r"dot\.png: image is 1x1 pixels: too small"):
        load_scan(tmp_path / "dot.png")


def test_5d_nifti(tmp_path):
    with pytest.raises(InvalidImageError, match=r"five\.nii.*5D"):
        load_scan(nifti(tmp_path / "five.nii", np.ones((8, 8, 8, 2, 2), np.float32)))


def test_truncated_nifti(tmp_path):
    src = nifti(tmp_path / "full.nii", brain())
    data = src.read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.nii.*truncated") as e:
        load_scan(tmp_path / "cut.nii")
    assert re.search(r"declares [\d,]+\.\d [kM]B of voxels but the file holds [\d,]+\.\d [kM]B$", str(e.value))
    hdr = nib.Nifti1Header()  # a header that declares far more than any file (it read "108000000.0 MB")
    hdr.set_data_shape((3000, 3000, 3000))
    hdr.set_data_dtype(np.float32)
    (tmp_path / "huge_header.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\1" * 4096)
    with pytest.raises(CorruptFileError, match=r"declares 108,000\.0 MB of voxels but the file holds 4\.4 kB$"):
        load_scan(tmp_path / "huge_header.nii")
    buf = gzip.compress(data)
    (tmp_path / "cut.nii.gz").write_bytes(buf[: len(buf) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.nii\.gz"):
        load_scan(tmp_path / "cut.nii.gz")


def test_nifti_gz_bomb(tmp_path):
    data = np.zeros((256, 256, 128), np.float32)
    data[0, 0, 0] = 1
    src = nifti(tmp_path / "big.nii.gz", data)  # 32 MB of zeros, ~30 kB on disk
    with pytest.raises(FileTooLargeError, match=r"big\.nii\.gz"):
        load_scan(src, max_bytes=4 * 1024 * 1024)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.png"):
        load_scan(tmp_path / "cut.png")


def test_list_series_errors_are_typed(tmp_path):
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(UnsupportedFileError):
        load_scan(tmp_path / "x.dcm")
    assert list_series(tmp_path / "x.dcm") == {}
    bad = tmp_path / "half.dcm"
    shutil.copy(DCM, bad)
    bad.write_bytes(DCM.read_bytes()[:300])
    with pytest.raises(ScanLoadError):
        list_series(bad)
