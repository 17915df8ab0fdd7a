"""Property: mutated or truncated real files either load as a finite float32 (S, H, W)
``Scan`` or raise an ``AnomalyError`` subclass -- never anything else."""

from __future__ import annotations

import gzip
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomaly.errors import AnomalyError
from anomaly.io import load_scan
from anomaly.scan import Scan

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DICOM = ROOT / "assets" / "dicom" / "brain_pd_series" / "brain_005.dcm"
NIFTI = ROOT / "assets" / "templates" / "itk_subject_t1_2x2x3mm.nii.gz"


def _small_nifti() -> bytes:
    """A real (cropped) brain volume as an uncompressed .nii, a few tens of kB."""
    import nibabel as nib

    img = nib.load(NIFTI)
    crop = np.asarray(img.dataobj[40:80, 40:80, 20:30])
    out = nib.Nifti1Image(crop, img.affine)
    return out.to_bytes()


def _png() -> bytes:
    import nibabel as nib

    sl = np.asarray(nib.load(NIFTI).dataobj[:, :, 31], dtype=np.float32)
    sl = (255 * (sl - sl.min()) / max(float(np.ptp(sl)), 1.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(sl).save(buf, "PNG")
    return buf.getvalue()


SEEDS = {
    "dcm": DICOM.read_bytes(),
    "nii": _small_nifti(),
    "png": _png(),
}


@st.composite
def mutated(draw, kind: str) -> tuple[str, bytes]:
    data = bytearray(SEEDS["nii" if kind.startswith("nii") else kind])
    n = len(data)
    header = 1400 if kind == "dcm" else (352 if kind.startswith("nii") else 64)
    for _ in range(draw(st.integers(0, 8))):
        # most mutations hit the header, where parsers make decisions
        hi = header if draw(st.booleans()) else n
        pos = draw(st.integers(0, min(hi, n) - 1))
        data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, n))]
    suffix = {"dcm": ".dcm", "nii": ".nii", "nii.gz": ".nii.gz", "png": ".png"}[kind]
    payload = gzip.compress(bytes(data), compresslevel=1) if kind == "nii.gz" else bytes(data)
    if kind == "nii.gz" and draw(st.booleans()):  # also corrupt the compressed stream
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut]
    return suffix, payload


def _check(suffix: str, payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(payload)
        try:
            scan = load_scan(path, max_bytes=64 * 1024 * 1024)
        except AnomalyError:
            return
        assert isinstance(scan, Scan)
        v = scan.voxels
        assert v.dtype == np.float32 and v.ndim == 3
        assert np.isfinite(v).all()


FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.timeout(120)
@FUZZ
@given(mutated("dcm"))
def test_fuzzed_dicom(case):
    _check(*case)


@pytest.mark.timeout(120)
@FUZZ
@given(st.sampled_from(["nii", "nii.gz"]).flatmap(mutated))
def test_fuzzed_nifti(case):
    _check(*case)


@pytest.mark.timeout(120)
@FUZZ
@given(mutated("png"))
def test_fuzzed_png(case):
    _check(*case)


def test_seeds_load():
    for suffix, kind in ((".dcm", "dcm"), (".nii", "nii"), (".png", "png")):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"seed{suffix}"
            p.write_bytes(SEEDS[kind])
            assert load_scan(p).voxels.ndim == 3
