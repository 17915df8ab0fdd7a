"""DICOM: single files, multi-frame files and series of files -> ``Scan``.

Files are read strictly (no ``force=True``): the 'DICM' marker is required. Headers are
read first (no pixel data), grouped by SeriesInstanceUID and validated (size,
transfer syntax, photometric interpretation) before any pixel data is decoded.
Compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
HTJ2K, RLE) are decoded by pydicom through pylibjpeg / Pillow.

Display convention (see ``anomaly.scan``): for an axial series rows run anterior ->
posterior and columns patient right -> left (flipped/transposed from the stored
order if needed), slices inferior -> superior. Coronal and sagittal series are kept
as stored (``orientation`` says so, ``known_frame=False``). Nothing identifying
(patient name, ID, birth date, ...) is copied into the ``Scan``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from anomaly.errors import (
    CorruptFileError,
    FileTooLargeError,
    MultipleSeriesError,
    UnsupportedFileError,
)
from anomaly.scan import Scan

# Objects that are DICOM but not images to analyse.
NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC", "ECG", "AU"}
_MONO = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PALETTE = "PALETTE COLOR"
# Non-identifying header fields copied into ``scan.meta``.
META_KEYWORDS = (
    "SeriesInstanceUID", "SeriesNumber", "SOPClassUID", "ImageType", "BodyPartExamined",
    "MRAcquisitionType", "ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName",
    "PulseSequenceName", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
    "MagneticFieldStrength", "Manufacturer", "ManufacturerModelName", "PhotometricInterpretation",
    "SliceThickness", "SpacingBetweenSlices", "KVP", "ConvolutionKernel", "FrameOfReferenceUID",
    "BitsStored", "PatientPosition",
)
# pydicom warns (log and warning) about a malformed value by quoting it, e.g. a birth date not in DICOM
# format: that would put patient data in the server's log; the loader reads such values as missing anyway
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
_IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
                "IssuerOfPatientID", "OtherPatientNames", "PatientMotherBirthName", "InstitutionName",
                "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName")


def _get(ds: Dataset, keyword: str, default=None):
    """``ds.keyword`` or ``default``; never raises (corrupt values read as missing)."""
    try:
        v = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - bad value conversions in corrupt files
        return default
    return default if v is None else v


def _first_float(v) -> float | None:
    try:
        if isinstance(v, (list, tuple, MultiValue)):
            if not len(v):
                return None
            v = v[0]
        if v is None or v == "":
            return None
        f = float(v)
    except Exception:  # noqa: BLE001
        return None
    return f if math.isfinite(f) else None


def _floats(v, n: int) -> np.ndarray | None:
    try:
        if v is None or len(v) != n:
            return None
        a = np.array([float(x) for x in v], dtype=np.float64)
    except Exception:  # noqa: BLE001
        return None
    return a if np.all(np.isfinite(a)) else None


def _int(v, default: int | None = None) -> int | None:
    try:
        if isinstance(v, (list, tuple, MultiValue)):
            v = v[0] if len(v) else None
        return default if v is None or v == "" else int(v)
    except Exception:  # noqa: BLE001
        return default


def _text(v) -> str:
    try:
        if isinstance(v, (list, tuple, MultiValue)):
            return "\\".join(str(x) for x in v)
        return "" if v is None else str(v)
    except Exception:  # noqa: BLE001
        return ""


def _plain(v):
    """A header value as plain JSON-able Python (str / float / int / list)."""
    if isinstance(v, (list, tuple, MultiValue)):
        return [_plain(x) for x in v]
    if isinstance(v, bool):
        return v
    if isinstance(v, int):  # includes pydicom IS
        return int(v)
    if isinstance(v, float):  # includes pydicom DSfloat
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray)):
        return None
    return str(v)


# ----------------------------------------------------------------------------- privacy


def _identifiers(ds: Dataset) -> list[str]:
    """Strings that identify the patient (to scrub from any text we keep)."""
    out: set[str] = set()
    for kw in _IDENTIFYING:
        v = _text(_get(ds, kw, ""))
        if not v:
            continue
        out.add(v.strip())
        for part in re.split(r"[\^\\ ,=]+", v):
            out.add(part.strip())
    return sorted((s for s in out if len(s) >= 3), key=len, reverse=True)


def scrub(text: str, identifiers: list[str]) -> str:
    """``text`` with every occurrence of an identifier replaced by '[removed]'."""
    for ident in identifiers:
        text = re.sub(re.escape(ident), "[removed]", text, flags=re.IGNORECASE)
    return text


def _scrub_any(v, identifiers: list[str]):
    if isinstance(v, str):
        return scrub(v, identifiers)
    if isinstance(v, list):
        return [_scrub_any(x, identifiers) for x in v]
    return v


# ----------------------------------------------------------------------------- headers


@dataclass
class Header:
    """A DICOM file's header (no pixel data) and the facts we group and sort by."""

    path: Path
    name: str
    ds: Dataset
    series_uid: str
    rows: int
    cols: int
    frames: int
    modality: str
    instance: int | None
    ipp: np.ndarray | None
    iop: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def read_header(path: Path, name: str) -> Header | None:
    """Parse the header of one DICOM file (strict). None for DICOM files that hold no
    image (reports, segmentations, DICOMDIR). Raises ``CorruptFileError``."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        raise CorruptFileError(f"{name}: not a valid DICOM file (the header cannot be parsed)") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a file marked 'DICM'
        raise CorruptFileError(f"{name}: the DICOM header is truncated or corrupt ({type(e).__name__})") from None
    modality = _text(_get(ds, "Modality", "")).strip().upper()[:16]
    if modality in NON_IMAGE_MODALITIES:
        return None
    if "Rows" not in ds or "Columns" not in ds:
        sop = _get(ds, "SOPClassUID") or _get(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
        if sop and "Image Storage" in _ts_name(pydicom.uid.UID(str(sop))):
            # an image object whose header stops before Rows/Columns: cut short
            raise CorruptFileError(f"{name}: the DICOM file is truncated: its image header ends early")
        return None
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    frames = _int(_get(ds, "NumberOfFrames", 1), None)
    if not rows or not cols or rows < 0 or cols < 0 or frames is None or frames < 1:
        raise CorruptFileError(f"{name}: invalid image size in the DICOM header")
    return Header(
        path=Path(path),
        name=name,
        ds=ds,
        series_uid=_text(_get(ds, "SeriesInstanceUID", "")).strip() or "unknown-series",
        rows=rows,
        cols=cols,
        frames=frames,
        modality=modality or "unknown",
        instance=_int(_get(ds, "InstanceNumber")),
        ipp=_floats(_get(ds, "ImagePositionPatient"), 3),
        iop=_floats(_get(ds, "ImageOrientationPatient"), 6),
    )


def _validate(h: Header, max_bytes: int) -> None:
    """Header checks before any pixel data is decoded."""
    ds, name = h.ds, h.name
    ts = _get(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not ts:
        raise CorruptFileError(f"{name}: the DICOM file meta header has no transfer syntax")
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except Exception:  # noqa: BLE001 - NotImplementedError for video / unknown syntaxes
        raise UnsupportedFileError(
            f"{name}: pixel data encoded as '{_ts_name(ts)}' cannot be decoded (not supported)"
        ) from None
    if not decoder.is_available:
        raise UnsupportedFileError(
            f"{name}: pixel data encoded as '{_ts_name(ts)}' needs a decoder that is not installed"
        )
    spp = _int(_get(ds, "SamplesPerPixel", 1), 0)
    bits = _int(_get(ds, "BitsAllocated"), 0)
    pi = _text(_get(ds, "PhotometricInterpretation", "")).strip().upper()
    if spp not in (1, 3) or bits not in (1, 8, 16, 32, 64):
        raise CorruptFileError(
            f"{name}: unsupported pixel layout ({spp} samples per pixel, {bits} bits allocated)"
        )
    if pi not in _MONO + _COLOUR + (_PALETTE,):
        raise UnsupportedFileError(f"{name}: photometric interpretation '{pi[:20]}' is not supported")
    if (spp == 3) != (pi in _COLOUR):
        raise CorruptFileError(f"{name}: {spp} samples per pixel do not match '{pi}'")
    decoded = h.rows * h.cols * h.frames * spp * max(bits, 8) // 8
    if decoded > max_bytes:
        raise FileTooLargeError(
            f"{name}: the image would decode to {decoded / 1e6:.1f} MB, above the "
            f"{max_bytes / 1e6:.1f} MB limit"
        )


def _ts_name(ts) -> str:
    try:
        return str(ts.name)[:80]
    except Exception:  # noqa: BLE001
        return "unknown"


def group_series(headers: list[Header]) -> dict[str, list[Header]]:
    groups: dict[str, list[Header]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    return groups


def describe_series(group: list[Header]) -> str:
    """'MR, "FSE PD AXIAL OBL", series 2, 20 images, 256x256' (no patient identifiers)."""
    h0 = group[0]
    ids = _identifiers(h0.ds)
    desc = scrub(_text(_get(h0.ds, "SeriesDescription", "")).strip(), ids)
    number = _int(_get(h0.ds, "SeriesNumber"))
    n_images = sum(h.frames for h in group)
    (rows, cols), _ = Counter((h.rows, h.cols) for h in group).most_common(1)[0]
    parts = [scrub(h0.modality, ids)]
    if desc:
        parts.append(f'"{desc}"')
    if number is not None:
        parts.append(f"series {number}")
    files = f" in {len(group)} files" if any(h.frames > 1 for h in group) and len(group) > 1 else ""
    parts.append(f"{n_images} image{'s' if n_images != 1 else ''}{files}")
    parts.append(f"{rows}x{cols}")
    return ", ".join(parts)  # free text scrubbed above; the rest is numbers we wrote


def _headers(entries, label: str) -> tuple[list[Header], int]:
    headers, skipped = [], 0
    for e in entries:
        h = read_header(e.path, e.name)
        if h is None:
            skipped += 1
        else:
            headers.append(h)
    if not headers:
        if len(entries) == 1:
            raise UnsupportedFileError(
                f"{entries[0].name}: a DICOM file without an image to analyse "
                "(e.g. a report, segmentation or DICOMDIR)"
            )
        raise UnsupportedFileError(
            f"{label}: the DICOM files hold no images to analyse (reports, segmentations or DICOMDIR only)"
        )
    return headers, skipped


def _keyed(groups: dict[str, list]) -> dict[str, str]:
    """Series key (``anomaly.keys.series_key``, never the UID) -> description, for grouped headers."""
    from anomaly.keys import series_key

    return {series_key(uid): describe_series(g) for uid, g in groups.items()}


def list_series(entries, max_bytes: int | None = None) -> dict[str, str]:
    """Series key (``anomaly.keys.series_key``, not the UID) -> description for DICOM ``entries``
    (loader ``Entry`` objects); ``load_series`` takes the key."""
    headers, _ = _headers(entries, "the upload")
    return _keyed(group_series(headers))


# ----------------------------------------------------------------------------- pixels


def _fg_item(ds: Dataset, frame: int, seq_name: str) -> Dataset | None:
    """Item of functional-group macro ``seq_name`` for ``frame`` (per-frame, else shared)."""
    for top in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        try:
            seq = ds.get(top)
            if not seq:
                continue
            idx = frame if top.startswith("Per") else 0
            if idx >= len(seq):
                continue
            inner = seq[idx].get(seq_name)
            if inner:
                return inner[0]
        except Exception:  # noqa: BLE001
            continue
    return None


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    src = _fg_item(ds, frame, "PixelValueTransformationSequence") or ds
    slope = _first_float(_get(src, "RescaleSlope"))
    intercept = _first_float(_get(src, "RescaleIntercept"))
    return (slope if slope else 1.0), (intercept if intercept is not None else 0.0)


def _window(ds: Dataset, frame: int = 0) -> tuple[float, float] | None:
    src = _fg_item(ds, frame, "FrameVOILUTSequence") or ds
    c, w = _first_float(_get(src, "WindowCenter")), _first_float(_get(src, "WindowWidth"))
    if c is None or w is None or w <= 0:
        return None
    return (c, w)


def _pixel_spacing(ds: Dataset, frame: int = 0) -> tuple[float, float] | None:
    for src in (_fg_item(ds, frame, "PixelMeasuresSequence"), ds):
        if src is None:
            continue
        for kw in ("PixelSpacing", "ImagerPixelSpacing"):
            v = _floats(_get(src, kw), 2)
            if v is not None and np.all(v > 0):
                return float(v[0]), float(v[1])
    return None


def _thickness(ds: Dataset, frame: int = 0) -> float | None:
    for src in (_fg_item(ds, frame, "PixelMeasuresSequence"), ds):
        if src is not None:
            t = _first_float(_get(src, "SliceThickness"))
            if t and t > 0:
                return t
    return None


def _luminance(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32, copy=False)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def read_dataset(path: Path) -> Dataset:
    """Strict full read that stops after the pixel data element (some files carry
    megabytes of trailing padding that would otherwise be parsed element by element)."""
    seen = False

    def stop_when(tag, vr, length) -> bool:
        nonlocal seen
        if seen:
            return True
        seen = int(tag) in _PIXEL_TAGS
        return False

    with open(path, "rb") as f:
        return pydicom.filereader.read_partial(f, stop_when, force=False)


def _decode(h: Header) -> tuple[Dataset, np.ndarray]:
    """Full read + decode: (dataset, (F, H, W) float32 grey frames, rescaled for mono)."""
    name = h.name
    try:
        ds = read_dataset(h.path)
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{name}: the DICOM file is truncated or corrupt ({type(e).__name__})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CorruptFileError(f"{name}: the DICOM file has no pixel data (truncated?)")
    try:
        if _get(ds.file_meta, "TransferSyntaxUID") == pydicom.uid.RLELossless:
            # pydicom's own RLE decoder: pylibjpeg-rle panics on some corrupt streams
            ds.pixel_array_options(decoding_plugin="pydicom")
        arr = np.asarray(ds.pixel_array)
    except NotImplementedError:
        raise UnsupportedFileError(f"{name}: the pixel data encoding is not supported") from None
    except MemoryError:
        raise FileTooLargeError(f"{name}: the image is too large to decode") from None
    except RuntimeError as e:
        if "decode" in str(e).lower():
            raise CorruptFileError(
                f"{name}: the compressed pixel data could not be decoded (corrupt, or a variant "
                "the installed decoders do not support)"
            ) from None
        raise CorruptFileError(f"{name}: the pixel data is corrupt ({type(e).__name__})") from None
    except BaseException as e:  # noqa: BLE001 - short pixel data, bad lengths, decoder panics
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        # (pylibjpeg-rle's Rust decoder raises pyo3 PanicException, a BaseException)
        raise CorruptFileError(
            f"{name}: the pixel data is truncated or corrupt ({type(e).__name__})"
        ) from None
    pi = _text(_get(ds, "PhotometricInterpretation", "")).strip().upper()
    if pi == _PALETTE:
        try:
            arr = np.asarray(pydicom.pixels.apply_color_lut(arr, ds))
        except Exception as e:  # noqa: BLE001
            raise CorruptFileError(f"{name}: the colour palette is corrupt ({type(e).__name__})") from None
    colour = pi == _PALETTE or pi in _COLOUR
    expected = 3 + (1 if h.frames > 1 else 0) + (0 if colour else -1)
    if arr.ndim != expected:
        raise CorruptFileError(f"{name}: decoded pixel data has an unexpected shape {arr.shape}")
    if h.frames == 1:
        arr = arr[None]
    if arr.shape[1:3] != (h.rows, h.cols) or arr.shape[0] != h.frames:
        raise CorruptFileError(f"{name}: decoded pixel data has an unexpected shape {arr.shape}")
    if colour:
        if arr.shape[-1] != 3:
            raise CorruptFileError(f"{name}: colour pixel data without 3 channels")
        return ds, _luminance(arr)
    out = np.empty(arr.shape, np.float32)
    for i in range(arr.shape[0]):
        slope, intercept = _rescale(ds, i)
        out[i] = arr[i].astype(np.float64) * slope + intercept
    return ds, out


# ----------------------------------------------------------------------------- geometry


@dataclass
class Display:
    """How stored slices were put into display order."""

    orientation: str
    known_frame: bool
    transposed: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    flip_slices: bool = False
    oblique_deg: float = 0.0  # tilt of the slice normal from the nearest axis (>= 1: said, not resampled)


def _to_display(vol: np.ndarray, iop: np.ndarray | None, sorted_by_position: bool) -> tuple[np.ndarray, Display]:
    """(N, H, W) stored slices (ascending along the slice normal when sorted by
    position) -> display order; see module docstring."""
    if iop is None:
        return vol, Display("as stored (no patient orientation in the file)", known_frame=False)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        return vol, Display("as stored (invalid patient orientation in the file)", known_frame=False)
    normal = normal / norm
    k = int(np.argmax(np.abs(normal)))
    plane = ("sagittal", "coronal", "axial")[k]
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[k])))))
    oblique = f" (oblique by {angle:.0f} deg, not resampled)" if angle >= 1.0 else ""
    flip_s = sorted_by_position and normal[k] < 0
    if plane != "axial":
        d = Display(f"DICOM {plane}{oblique}, as stored (not reoriented to axial)", known_frame=False,
                    flip_slices=bool(flip_s), oblique_deg=angle)
    else:
        transposed = abs(row[1]) > abs(row[0])
        if transposed:
            row, col = col, row
        d = Display(f"DICOM axial -> radiological axial{oblique}", known_frame=True,
                    transposed=bool(transposed), flip_rows=bool(col[1] < 0),
                    flip_cols=bool(row[0] < 0), flip_slices=bool(flip_s), oblique_deg=angle)
    if d.transposed:
        vol = np.swapaxes(vol, 1, 2)
    if d.flip_rows:
        vol = vol[:, ::-1, :]
    if d.flip_cols:
        vol = vol[:, :, ::-1]
    if d.flip_slices:
        vol = vol[::-1]
    return np.ascontiguousarray(vol), d


def _sort_by_position(positions: list[np.ndarray | None], iop: np.ndarray | None, tiebreak: list) -> tuple[
    list[int], float | None, int, bool
]:
    """Order of slices along the normal, slice spacing, number of duplicates dropped,
    and whether positions were used. Falls back to ``tiebreak`` order (InstanceNumber)."""
    n = len(positions)
    fallback = sorted(range(n), key=lambda i: tiebreak[i])
    if iop is None or any(p is None for p in positions):
        return fallback, None, 0, False
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 1e-3:
        return fallback, None, 0, False
    normal = normal / np.linalg.norm(normal)
    proj = [float(np.dot(p, normal)) for p in positions]
    order = sorted(range(n), key=lambda i: (proj[i], tiebreak[i]))
    keep: list[int] = []
    for i in order:
        if keep and abs(proj[i] - proj[keep[-1]]) < 1e-3:
            continue  # same position: another echo / time point
        keep.append(i)
    spacing = None
    if len(keep) > 1:
        d = np.diff([proj[i] for i in keep])
        med = float(np.median(d))
        spacing = med if med > 1e-4 else None
    return keep, spacing, n - len(keep), True


# ----------------------------------------------------------------------------- loading


def load_series(entries, series_uid: str | None, max_bytes: int, label: str = "the upload") -> tuple[Scan, list[Path]]:
    """DICOM ``entries`` -> (Scan, files used). Raises ``MultipleSeriesError`` when they
    hold several series and ``series_uid`` is None (or not among them); its ``series`` name each
    by its key (``anomaly.keys.series_key``, never the UID), and ``series_uid`` may be a UID or a key."""
    from anomaly.keys import series_key

    headers, skipped = _headers(entries, label)
    groups = group_series(headers)
    by_key = {series_key(u): u for u in groups}
    if series_uid is None:
        if len(groups) > 1:
            raise MultipleSeriesError(
                f"{label} holds {len(groups)} DICOM series; choose one to load", series=_keyed(groups)
            )
        uid = next(iter(groups))
    elif series_uid in groups or series_uid in by_key:
        uid = by_key.get(series_uid, series_uid)
    else:
        raise MultipleSeriesError(
            f"{label}: the chosen series is not in this upload; choose one of its "
            f"{len(groups)} series", series=_keyed(groups)
        )
    group = groups[uid]
    scan = _load_group(group, max_bytes, label)
    if skipped:
        scan.notes.append(f"{skipped} DICOM file(s) without an image (reports, DICOMDIR, ...) were ignored")
    if len(groups) > 1:
        scan.notes.append(f"series chosen from {len(groups)} series in the upload")
    return scan, [h.path for h in group]


def _load_group(group: list[Header], max_bytes: int, label: str) -> Scan:
    notes: list[str] = []
    (rows, cols), _ = Counter((h.rows, h.cols) for h in group).most_common(1)[0]
    kept = [h for h in group if (h.rows, h.cols) == (rows, cols)]
    if len(kept) < len(group):
        notes.append(f"{len(group) - len(kept)} image(s) of a different size in the series were skipped")
    group = kept
    for h in group:
        _validate(h, max_bytes)
    declared = sum(h.rows * h.cols * h.frames * 4 for h in group)  # as float32
    if declared > max(max_bytes, 1) * 2:
        raise FileTooLargeError(
            f"{label}: the series would decode to {declared / 1e6:.1f} MB, above the limit"
        )
    multi = [h for h in group if h.frames > 1]
    if multi:
        first = sorted(multi, key=lambda h: (h.instance if h.instance is not None else 0, h.name))[0]
        if len(group) > 1:
            notes.append(f"the series holds {len(group)} files with multi-frame images: showing one file only")
        return _finish(*_load_multiframe(first), notes=notes, headers=[first])
    return _finish(*_load_singles(group), notes=notes, headers=group)


def _load_singles(group: list[Header]):
    iops = [h.iop for h in group]
    iop = iops[0] if all(i is not None for i in iops) else None
    if iop is not None and any(np.max(np.abs(i - iop)) > 1e-2 for i in iops):
        iop = None  # mixed orientations: no geometry
    tiebreak = [((h.instance if h.instance is not None else 0), h.name) for h in group]
    order, spacing, n_dup, by_pos = _sort_by_position([h.ipp for h in group], iop, tiebreak)
    notes = []
    if n_dup:
        notes.append(f"{n_dup} image(s) at repeated positions (other echoes / time points) were skipped")
    if not by_pos and len(group) > 1:
        notes.append("slice positions missing: slices ordered by InstanceNumber")
    if iop is None and all(h.iop is not None for h in group):
        notes.append("the series mixes image orientations: shown as stored")
    hs = [group[i] for i in order]
    slices, datasets = [], []
    for h in hs:
        ds, frames = _decode(h)
        slices.append(frames[0])
        datasets.append(ds)
    vol = np.stack(slices)
    ds0 = datasets[0]
    if spacing is None:
        spacing = _thickness(ds0) or 1.0
    per_slice = {
        "SOPInstanceUIDs": [_text(_get(d, "SOPInstanceUID", "")) for d in datasets],
        "ImagePositionPatient": [h.ipp.tolist() if h.ipp is not None else None for h in hs],
        "InstanceNumbers": [h.instance for h in hs],
    }
    return vol, ds0, iop, by_pos, spacing, _pixel_spacing(ds0), _window(ds0), notes, per_slice


def _load_multiframe(h: Header):
    ds, vol = _decode(h)
    notes = []
    n = vol.shape[0]
    iop = None
    for src in (_fg_item(ds, 0, "PlaneOrientationSequence"), ds):
        if src is not None:
            iop = _floats(_get(src, "ImageOrientationPatient"), 6)
            if iop is not None:
                break
    positions = []
    for i in range(n):
        item = _fg_item(ds, i, "PlanePositionSequence")
        positions.append(_floats(_get(item, "ImagePositionPatient"), 3) if item is not None else None)
    order, spacing, n_dup, by_pos = _sort_by_position(positions, iop, list(range(n)))
    if n_dup:
        notes.append(f"{n_dup} frame(s) at repeated positions (other echoes / time points) were skipped")
    if not by_pos:
        notes.append(f"multi-frame file ({n} frames) without frame positions: frames in stored order")
    vol = vol[order]
    if spacing is None:
        spacing = _first_float(_get(ds, "SpacingBetweenSlices"))
        spacing = spacing if spacing and spacing > 0 else (_thickness(ds) or 1.0)
    uid = _text(_get(ds, "SOPInstanceUID", ""))
    per_slice = {
        "SOPInstanceUIDs": [uid],
        "frames": [int(i) + 1 for i in order],  # 1-based frame numbers in display order
        "ImagePositionPatient": [positions[i].tolist() if positions[i] is not None else None for i in order],
    }
    return vol, ds, iop, by_pos, spacing, _pixel_spacing(ds), _window(ds), notes, per_slice


def _finish(vol, ds, iop, by_pos, spacing, pixel_spacing, window, load_notes, per_slice, *, notes, headers) -> Scan:
    notes = notes + load_notes
    pi = _text(_get(ds, "PhotometricInterpretation", "")).strip().upper()
    if pi == "MONOCHROME1":  # higher values are darker: invert so that bright = high
        finite = vol[np.isfinite(vol)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            vol = (lo + hi) - vol
            if window is not None:
                window = (lo + hi - window[0], window[1])
            notes.append("MONOCHROME1 image inverted for display")
    dh, dw = pixel_spacing if pixel_spacing else (1.0, 1.0)
    if pixel_spacing is None:
        notes.append("no pixel spacing in the file: areas and extents are in pixels")
    vol, disp = _to_display(vol, iop, by_pos)
    if disp.oblique_deg >= 1.0:
        notes.append(f"acquired oblique (tilted {disp.oblique_deg:.0f} deg), shown as stored without resampling"
                     + (": coronal and sagittal views are reformats of the tilted stack" if len(vol) > 1 else ""))
    if disp.transposed:
        dh, dw = dw, dh
    if disp.flip_slices:
        per_slice = {k: v[::-1] if len(v) == vol.shape[0] else v for k, v in per_slice.items()}
    affine = _display_affine(iop, per_slice.get("ImagePositionPatient"), pixel_spacing, disp, vol.shape) \
        if by_pos and disp.known_frame and pixel_spacing else None
    ids = _identifiers(ds)
    modality = scrub(_text(_get(ds, "Modality", "")).strip().upper()[:16] or "unknown", ids)
    n, hgt, wid = vol.shape
    if n > 1:
        description = f"{modality}, {n} slices {hgt}x{wid}, {dh:.2f}x{dw:.2f}x{spacing:.1f} mm"
    else:
        description = f"{modality}, 2D image {hgt}x{wid}, {dh:.2f}x{dw:.2f} mm"
    meta: dict = {}
    for kw in META_KEYWORDS:
        v = _get(ds, kw)
        if v is None or v == "":
            continue
        try:
            meta[kw] = _scrub_any(_plain(v), ids)
        except Exception:  # noqa: BLE001
            continue
    ts = _get(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    meta["TransferSyntax"] = _ts_name(ts) if ts else "unknown"
    if iop is not None:
        meta["ImageOrientationPatient"] = iop.tolist()
    meta["PixelSpacing"] = [dh, dw]
    meta["n_files"] = len(headers)
    meta.update(per_slice)
    meta["display_transform"] = {
        "transposed": disp.transposed, "flip_rows": disp.flip_rows,
        "flip_cols": disp.flip_cols, "flip_slices": disp.flip_slices,
    }
    study = _text(_get(ds, "StudyInstanceUID", "")).strip() or None
    return Scan(
        voxels=vol,
        spacing=(float(spacing), float(dh), float(dw)),
        modality=modality,
        source="dicom",
        orientation=disp.orientation,
        description=description,  # modality scrubbed above, the rest is numbers
        series_description=scrub(_text(_get(ds, "SeriesDescription", "")).strip(), ids),
        is_volume=n > 1,
        known_frame=disp.known_frame,
        spacing_known=pixel_spacing is not None,
        notes=notes,
        study_uid=study,
        window=window,
        meta=meta,
        affine=affine,
    )


def _display_affine(iop, positions, pixel_spacing, disp: "Display", shape: tuple[int, int, int]) -> np.ndarray | None:
    """The affine of the display grid, display (s, h, w) -> RAS+ mm, from the slice positions (in
    display order), the orientation and the stored pixel spacing, undoing ``_to_display``'s
    transpose and flips; the slice step is the mean step between the first and last positions."""
    if iop is None or not positions or any(p is None for p in positions) or len(positions) != shape[0]:
        return None
    row_dir, col_dir = np.asarray(iop[:3], np.float64), np.asarray(iop[3:], np.float64)
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])  # between rows, between columns
    n, h, w = shape
    p0 = np.asarray(positions[0], np.float64)
    step_s = (np.asarray(positions[-1], np.float64) - p0) / (n - 1) if n > 1 else np.cross(row_dir, col_dir)
    # a stored pixel (r, c) lies at p + r * dr * col_dir + c * dc * row_dir (DICOM PS3.3 C.7.6.2.1.1)
    e_h, e_w = (dc * row_dir, dr * col_dir) if disp.transposed else (dr * col_dir, dc * row_dir)
    origin = p0.copy()
    if disp.flip_rows:
        origin, e_h = origin + (h - 1) * e_h, -e_h
    if disp.flip_cols:
        origin, e_w = origin + (w - 1) * e_w, -e_w
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = step_s, e_h, e_w, origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


__all__ = ["describe_series", "list_series", "load_series", "read_dataset", "read_header", "scrub"]
