"""NIfTI-1 / NIfTI-2 (.nii, .nii.gz) -> ``Scan`` via nibabel.

The volume is brought to the closest canonical (RAS+) orientation with
``nib.as_closest_canonical`` and then to the display convention with
``anomaly.scan.ras_to_display``. A 4D file shows its first volume (with a note), a 2D
file is a 2D image, more than 4 dimensions are refused. The file is read into memory
with a cap of ``max_bytes`` (also after gzip decompression).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from anomaly.errors import CorruptFileError, FileTooLargeError, InvalidImageError
from anomaly.scan import Scan, ras_to_display

_MR_HINTS = re.compile(
    r"(^|[^a-z0-9])(t1w?|t2w?|t2star|flair|pdw?|mprage|spgr|dwi|adc|swi|bold|asl|mri?)([^a-z0-9]|$)"
    r"|(^|[^a-z])te=\d",  # dcm2niix writes 'TE=..;Time=..' into descrip
    re.IGNORECASE,
)
_CT_HINTS = re.compile(r"(^|[^a-z0-9])ct([^a-z0-9]|$)", re.IGNORECASE)


@contextlib.contextmanager
def _quiet_nibabel():
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read(path: Path, name: str, gz: bool, max_bytes: int) -> bytes:
    if not gz:
        return Path(path).read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise CorruptFileError(f"{name}: the gzip stream is truncated or corrupt ({type(e).__name__})") from None
    if len(raw) > max_bytes:
        raise FileTooLargeError(
            f"{name}: decompresses to more than the {max_bytes / 1e6:.1f} MB limit"
        )
    return raw


def _modality_hint(header, name: str) -> str:
    """'MR' / 'CT' when the header description or file name says so, else 'unknown'."""
    try:
        descrip = bytes(header.get("descrip", b"")).split(b"\x00")[0].decode("latin-1")
    except Exception:  # noqa: BLE001
        descrip = ""
    stem = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)
    for text in (descrip, stem):
        if _MR_HINTS.search(text):
            return "MR"
        if _CT_HINTS.search(text):
            return "CT"
    return "unknown"


def _size(n: float) -> str:
    """A byte count as people read it: "108,000.0 MB", "4.4 kB"."""
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def load_nifti(path: Path, name: str, gz: bool = False, max_bytes: int = 512 * 1024 * 1024) -> Scan:
    """Read a NIfTI file (see module docstring). Raises ``ScanLoadError`` subclasses."""
    raw = _read(path, name, gz, max_bytes)
    klass = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
    try:
        with _quiet_nibabel():  # no header "fix" messages on stderr
            img = klass.from_bytes(raw)
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(header.get_data_dtype())
        proxy = img.dataobj  # nibabel's view of the voxel data: offset and scaling
        offset = int(proxy.offset)
        slope, inter = float(proxy.slope), float(proxy.inter)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise CorruptFileError(f"{name}: the NIfTI header is corrupt ({type(e).__name__})") from None
    notes: list[str] = []
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise InvalidImageError(
            f"{name}: a {len(shape)}D image (shape {shape}) is not supported: only 2D, 3D or 4D NIfTI"
        )
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise InvalidImageError(f"{name}: the NIfTI image has no voxels (shape {shape})")
    if dtype.kind not in "biuf" and dtype.names is None:
        raise InvalidImageError(f"{name}: NIfTI data type {dtype} (e.g. complex) is not supported")
    n_vox = int(np.prod(shape, dtype=np.float64))
    need = n_vox * dtype.itemsize
    if offset < 0 or offset + need > len(raw):
        raise CorruptFileError(
            f"{name}: truncated: the header declares {_size(need)} of voxels but the file holds "
            f"{_size(len(raw))}{' once decompressed' if gz else ''}"
        )
    vol_vox = int(np.prod(shape[:3], dtype=np.float64))
    if vol_vox * 4 > max_bytes:
        raise FileTooLargeError(f"{name}: the volume would need {vol_vox * 4 / 1e6:.1f} MB, above the limit")
    try:
        data = np.frombuffer(raw, dtype=dtype, count=n_vox, offset=offset).reshape(shape, order="F")
        if len(shape) == 4:
            notes.append(f"4D file with {shape[3]} volumes: showing volume 1")
            data = data[..., 0]
        if dtype.names is not None:  # RGB24 / RGBA32
            fields = [data[f].astype(np.float32) for f in dtype.names[:3]]
            if len(fields) < 3:
                raise InvalidImageError(f"{name}: NIfTI data type {dtype} is not supported")
            data = 0.299 * fields[0] + 0.587 * fields[1] + 0.114 * fields[2]
        else:
            data = data.astype(np.float64)
            if np.isfinite(slope) and slope != 0 and slope != 1:
                data = data * slope
            if np.isfinite(inter) and inter != 0:
                data = data + inter
        data = data.astype(np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except InvalidImageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{name}: the NIfTI voxel data is corrupt ({type(e).__name__})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    try:
        zooms = [float(z) for z in header.get_zooms()[:3]]
    except Exception:  # noqa: BLE001
        zooms = [1.0, 1.0, 1.0]
    zooms = (zooms + [1.0, 1.0, 1.0])[:3]
    orientation, known = "NIfTI RAS -> radiological axial", True
    axcodes, display_affine = None, None
    try:
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("singular affine")
        axcodes = "".join(nib.aff2axcodes(affine))
        canon = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
        ras = np.asarray(canon.dataobj, dtype=np.float32)
        display_affine = _display_affine(np.asarray(canon.affine, np.float64), ras.shape[:3])
        zooms = [float(z) for z in canon.header.get_zooms()[:3]]
    except Exception:  # noqa: BLE001 - no usable orientation: keep the stored voxel order
        ras = data
        orientation, known = "NIfTI without a valid orientation: voxel order as stored", False
        notes.append("the NIfTI orientation (affine) is invalid: shown in stored voxel order")
    vox = ras_to_display(ras)
    spacing = (zooms[2], zooms[1], zooms[0])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        spacing = tuple(s if np.isfinite(s) and s > 0 else 1.0 for s in spacing)
        notes.append("invalid voxel size in the header: 1 mm assumed")
    if vox.shape[0] == 1 or min(vox.shape) > 1:
        pass
    elif vox.shape[1] == 1:  # a single coronal slice: rows superior -> inferior
        vox, spacing = np.ascontiguousarray(vox[::-1, 0, :])[None], (spacing[1], spacing[0], spacing[2])
        orientation, known = "NIfTI 2D coronal slice (rows superior -> inferior)", False
        display_affine = None
    else:  # a single sagittal slice
        vox, spacing = np.ascontiguousarray(vox[::-1, :, 0])[None], (spacing[2], spacing[0], spacing[1])
        orientation, known = "NIfTI 2D sagittal slice (rows superior -> inferior)", False
        display_affine = None
    n, h, w = vox.shape
    ds, dh, dw = spacing
    modality = _modality_hint(header, name)
    kind = "NIfTI" if modality == "unknown" else f"NIfTI {modality}"  # not "NIfTI unknown"
    if n > 1:
        description = f"{kind}, {n} slices {h}x{w}, {dh:.2f}x{dw:.2f}x{ds:.1f} mm"
    else:
        description = f"{kind}, 2D image {h}x{w}, {dh:.2f}x{dw:.2f} mm"
    try:
        intent = int(header.get("intent_code", 0))
        qform, sform = int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # noqa: BLE001
        intent, qform, sform = 0, 0, 0
    window = None
    try:
        cal_min, cal_max = float(header["cal_min"]), float(header["cal_max"])
        if np.isfinite(cal_min) and np.isfinite(cal_max) and cal_max > cal_min:
            window = ((cal_min + cal_max) / 2.0, cal_max - cal_min)  # display range in the header
    except Exception:  # noqa: BLE001
        window = None
    meta = {
        "format": "NIfTI-2" if klass is nib.Nifti2Image else "NIfTI-1",
        "original_shape": list(shape),
        "original_axcodes": axcodes,
        "datatype": str(dtype),
        "intent_code": intent,
        "qform_code": qform,
        "sform_code": sform,
    }
    return Scan(
        voxels=vox,
        spacing=spacing,
        modality=modality,
        source="nifti",
        orientation=orientation,
        description=description,
        is_volume=n > 1,
        known_frame=known,
        notes=notes,
        window=window,
        meta=meta,
        affine=display_affine if n > 1 else None,
    )


def _display_affine(canonical_affine: np.ndarray, ras_shape: tuple[int, int, int]) -> np.ndarray:
    """The affine of the display grid (``ras_to_display``): display (s, h, w) is canonical voxel
    (X - 1 - w, Y - 1 - h, s), mapped to RAS+ mm by the canonical affine."""
    x, y, _ = ras_shape
    to_canonical = np.array([[0, 0, -1, x - 1], [0, -1, 0, y - 1], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)
    return canonical_affine @ to_canonical
