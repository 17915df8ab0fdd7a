"""`load_scan` / `list_series`: one entry point for every upload.

Files are recognised by content (magic bytes / header), the suffix only sharpens the
error message. Folders are walked, zips are extracted safely into a temporary folder
(see ``archive``), DICOM files are grouped into series. Every failure surfaces as a
subclass of ``anomaly.errors.ScanLoadError`` whose message names the file (its name
only, never a folder path or patient data).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from anomaly.errors import (
    CorruptFileError,
    EmptyFileError,
    FileTooLargeError,
    InvalidImageError,
    ScanLoadError,
    UnsupportedFileError,
)
from anomaly.io.archive import extract_zip, mb_text
from anomaly.keys import content_hash
from anomaly.scan import Scan

DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # 512 MB per upload (also the decoded-pixel limit)
MAX_FILES = 20_000  # files in one folder / zip
MIN_SIZE = 8  # smallest image side we analyse

PathLike = Union[str, os.PathLike]
Paths = Union[PathLike, Sequence[PathLike]]  # one path or several uploaded files
SUPPORTED = "DICOM (.dcm, a folder or a .zip of a series), NIfTI (.nii, .nii.gz), PNG, JPEG or TIFF"

_SUFFIX_KIND = {
    ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", "": "dicom",
    ".nii": "nifti", ".nii.gz": "nifti", ".gz": "nifti",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".zip": "zip",
}
_KIND_LABEL = {"dicom": "DICOM", "nifti": "NIfTI", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "zip": "zip"}
_OTHER_FORMATS = {
    ".mgz": "FreeSurfer MGZ", ".mgh": "FreeSurfer MGH", ".nrrd": "NRRD", ".nhdr": "NRRD",
    ".mha": "MetaImage", ".mhd": "MetaImage", ".hdr": "Analyze", ".img": "Analyze",
    ".par": "Philips PAR/REC", ".rec": "Philips PAR/REC", ".bmp": "BMP", ".gif": "GIF",
    ".webp": "WebP", ".rar": "RAR", ".7z": "7-Zip", ".tar": "tar", ".tgz": "tar",
}


@dataclass(frozen=True)
class Entry:
    """One candidate file: where it is, the name to show, and its sniffed kind."""

    path: Path
    name: str
    kind: str | None  # 'dicom', 'nifti', 'png', 'jpeg', 'tiff', 'zip', ... or None
    size: int


# ----------------------------------------------------------------------------- sniffing


def _nifti_magic(head: bytes) -> str | None:
    """'nifti1' / 'nifti2' for a single-file NIfTI header, 'analyze' for hdr/img pairs."""
    if len(head) >= 348:
        for order in ("<", ">"):
            if int(np.frombuffer(head[:4], f"{order}i4")[0]) == 348:
                magic = head[344:348]
                if magic == b"n+1\x00":
                    return "nifti1"
                return "analyze"
    if len(head) >= 540 and head[4:8] == b"n+2\x00":
        for order in ("<", ">"):
            if int(np.frombuffer(head[:4], f"{order}i4")[0]) == 540:
                return "nifti2"
    if len(head) >= 8 and head[4:8] in (b"ni2\x00",):
        return "analyze"
    return None


def sniff(path: Path) -> str | None:
    """Kind of a file from its first bytes: 'dicom', 'nifti', 'nifti-gz', 'png', 'jpeg',
    'tiff', 'zip', 'analyze', 'gzip' or None (unknown)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    magic = _nifti_magic(head)
    if magic in ("nifti1", "nifti2"):
        return "nifti"
    if magic == "analyze":
        return "analyze"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(600)
        except Exception:  # noqa: BLE001 - corrupt gzip: decided by the caller
            return "gzip-corrupt"
        m = _nifti_magic(inner)
        if m in ("nifti1", "nifti2"):
            return "nifti-gz"
        if m == "analyze":
            return "analyze"
        return "gzip"
    return None


def _suffix(name: str) -> str:
    low = name.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(low).suffix


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2048)
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return printable >= 0.95 * len(text)


def _unknown_error(entry: Entry) -> ScanLoadError:
    """The error for a file whose content we do not recognise."""
    name, suf = entry.name, _suffix(entry.path.name)
    if entry.kind == "analyze":
        return UnsupportedFileError(
            f"{name}: Analyze / NIfTI header-image pairs (.hdr/.img) are not supported; "
            "convert to a single .nii or .nii.gz file"
        )
    if entry.kind == "gzip":
        return UnsupportedFileError(f"{name}: a gzip file that does not hold a NIfTI image")
    if entry.kind == "gzip-corrupt":
        return CorruptFileError(f"{name}: the gzip stream is truncated or corrupt")
    if suf in _OTHER_FORMATS:
        return UnsupportedFileError(f"{name}: {_OTHER_FORMATS[suf]} files are not supported; use {SUPPORTED}")
    expected = _SUFFIX_KIND.get(suf)
    text = _looks_like_text(entry.path)
    if expected == "dicom":
        if text:
            return UnsupportedFileError(f"{name} is not a DICOM file: it holds text, not an image")
        return UnsupportedFileError(
            f"{name} is not a DICOM file: the 'DICM' marker at byte 128 is missing "
            "(files without a DICOM header are not read)"
        )
    if expected is not None:
        label = _KIND_LABEL[expected]
        if text:
            return UnsupportedFileError(f"{name} is named like a {label} file but holds text, not an image")
        return CorruptFileError(
            f"{name} is named like a {label} file but its content is not {label}: corrupt or mislabelled"
        )
    return UnsupportedFileError(f"{name}: unsupported file type; use {SUPPORTED}")


# ----------------------------------------------------------------------------- gathering


def _as_paths(paths: Paths) -> list[Path]:
    if paths is None:
        raise EmptyFileError("no file was uploaded")
    if isinstance(paths, (str, os.PathLike)):
        items: Iterable = [paths]
    elif hasattr(paths, "path") or (hasattr(paths, "name") and not isinstance(paths, (list, tuple))):
        items = [paths]
    else:
        items = list(paths)
    out = []
    for p in items:
        if isinstance(p, (str, os.PathLike)):
            out.append(Path(p))
        elif isinstance(getattr(p, "path", None), str):  # e.g. gradio FileData
            out.append(Path(p.path))
        elif isinstance(getattr(p, "name", None), str):  # e.g. tempfile wrappers
            out.append(Path(p.name))
        else:
            raise UnsupportedFileError(f"cannot read an upload of type {type(p).__name__}")
    if not out:
        raise EmptyFileError("no file was uploaded")
    return out


def _entry(path: Path, name: str) -> Entry:
    try:
        size = path.stat().st_size
        kind = sniff(path) if size else None
    except OSError as e:
        raise CorruptFileError(f"{name}: the file cannot be read ({type(e).__name__})") from None
    return Entry(path, name, kind, size)


def _walk(folder: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            p = Path(root) / n
            if n.startswith(".") or p.is_symlink() or not p.is_file():
                continue
            files.append(p)
            if len(files) > MAX_FILES:
                raise FileTooLargeError(f"{folder.name}: more than {MAX_FILES} files in the folder")
    return files


@dataclass
class Gathered:
    """All candidate files of an upload, plus what was skipped."""

    entries: list[Entry]
    label: str  # file / folder / zip name to use in messages
    direct: bool  # a single file given directly (strict errors)
    notes: list[str]
    n_empty: int = 0


def gather(paths: Paths, stack: contextlib.ExitStack, max_bytes: int = DEFAULT_MAX_BYTES) -> Gathered:
    """Expand files, folders and zips into candidate entries (zips into temp folders
    registered on ``stack``). Checks existence, emptiness and size limits."""
    roots = _as_paths(paths)
    label = roots[0].name if len(roots) == 1 else f"the upload ({len(roots)} files)"
    entries: list[Entry] = []
    notes: list[str] = []
    n_empty = 0
    total = 0
    direct = len(roots) == 1 and not roots[0].is_dir()

    def add(entry: Entry, strict: bool) -> None:
        nonlocal total, n_empty
        if entry.size == 0:
            if strict:
                raise EmptyFileError(f"{entry.name} is empty (0 bytes)")
            n_empty += 1
            return
        if entry.size > max_bytes:
            raise FileTooLargeError(
                f"{entry.name} is {mb_text(entry.size)}, above the {mb_text(max_bytes)} limit"
            )
        total += entry.size
        if total > max_bytes:
            raise FileTooLargeError(f"{label}: the upload holds more than {mb_text(max_bytes)} of files")
        entries.append(entry)

    for root in roots:
        name = root.name or str(root)
        if not root.exists():
            raise EmptyFileError(f"{name}: file not found (nothing was uploaded?)")
        if root.is_dir():
            files = _walk(root)
            if not files:
                raise EmptyFileError(f"{name}: the folder is empty")
            for p in files:
                add(_entry(p, p.name), strict=False)
            continue
        entry = _entry(root, name)
        if entry.kind == "zip":
            if entry.size == 0:
                raise EmptyFileError(f"{name} is empty (0 bytes)")
            if entry.size > max_bytes:
                raise FileTooLargeError(f"{name} is {mb_text(entry.size)}, above the {mb_text(max_bytes)} limit")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anomaly-zip-")))
            members = extract_zip(root, tmp, max_bytes=max_bytes, name=name)
            if not members:
                raise EmptyFileError(f"{name}: the zip archive holds no files")
            for p, member_name in members:
                e = _entry(p, member_name)
                if e.kind == "zip":
                    notes.append(f"nested archive {member_name} was not opened")
                    continue
                add(e, strict=False)
            direct = False
            continue
        add(entry, strict=len(roots) == 1)
    if not entries:
        if n_empty:
            raise EmptyFileError(f"{label}: all files are empty")
        raise UnsupportedFileError(f"{label}: no files found")
    return Gathered(entries, label, direct, notes, n_empty)


# ----------------------------------------------------------------------------- checks


def check_voxels(scan: Scan, name: str) -> Scan:
    """Pixel sanity for every loader: (S, H, W) float32, at least 8x8, NaN/inf replaced
    (with a note), all-NaN or constant images refused with ``InvalidImageError``."""
    v = np.asarray(scan.voxels)
    if v.ndim != 3 or v.size == 0:
        raise InvalidImageError(f"{name}: no pixel data to analyse (array shape {tuple(v.shape)})")
    if min(v.shape[1:]) < MIN_SIZE:
        raise InvalidImageError(
            f"{name}: image is {v.shape[1]}x{v.shape[2]} pixels: too small to analyse "
            f"(at least {MIN_SIZE}x{MIN_SIZE} needed)"
        )
    v = v.astype(np.float32, copy=False)
    finite = np.isfinite(v)
    if not finite.all():
        n_bad = int(v.size - np.count_nonzero(finite))
        if n_bad == v.size:
            raise InvalidImageError(f"{name}: image holds no finite values (all NaN or infinite)")
        fill = float(np.min(v[finite]))
        v = np.where(finite, v, np.float32(fill)).astype(np.float32)
        scan.notes.append(f"{n_bad} non-finite voxels (NaN/inf) replaced by the image minimum")
    if float(v.max()) - float(v.min()) <= 1e-6:
        raise InvalidImageError(f"{name}: image is constant (every pixel {float(v.flat[0]):g}): nothing to analyse")
    scan.voxels = np.ascontiguousarray(v)
    return scan


def files_hash(paths: list[Path]) -> str:
    """Content hash of the files used: ``content_hash`` of one file, or of the sorted
    per-file digests for several (so a series hashes the same as files, folder or zip)."""
    if len(paths) == 1:
        return content_hash(Path(paths[0]))
    digests = sorted(bytes.fromhex(content_hash(Path(p))) for p in paths)
    return content_hash(b"".join(digests))


# ----------------------------------------------------------------------------- public API


def _split(g: Gathered) -> tuple[list[Entry], list[Entry], list[Entry]]:
    dicom = [e for e in g.entries if e.kind == "dicom"]
    images = [e for e in g.entries if e.kind in ("nifti", "nifti-gz", "png", "jpeg", "tiff")]
    other = [e for e in g.entries if e not in dicom and e not in images]
    return dicom, images, other


def _load(g: Gathered, series_uid: str | None, max_bytes: int) -> Scan:
    from anomaly.io import dicom as dcm
    from anomaly.io import nifti, raster

    dicom_entries, images, other = _split(g)
    if g.direct and other:
        raise _unknown_error(other[0])
    notes = list(g.notes)
    if dicom_entries:
        if images:
            notes.append(f"{len(images)} non-DICOM image file(s) in the upload were ignored")
        if other:
            notes.append(f"{len(other)} file(s) that are not images were ignored")
        scan, used = dcm.load_series(dicom_entries, series_uid, max_bytes, label=g.label)
    elif not images:
        if len(g.entries) == 1:
            raise _unknown_error(g.entries[0])
        raise UnsupportedFileError(f"{g.label}: no DICOM, NIfTI, PNG, JPEG or TIFF image found")
    elif len(images) > 1:
        shown = ", ".join(e.name for e in images[:3]) + (", ..." if len(images) > 3 else "")
        raise UnsupportedFileError(
            f"{g.label} holds {len(images)} separate images ({shown}); upload one scan at a time "
            "(several files are only combined for a DICOM series)"
        )
    else:
        e = images[0]
        if other:
            notes.append(f"{len(other)} file(s) that are not images were ignored")
        if e.kind in ("nifti", "nifti-gz"):
            scan = nifti.load_nifti(e.path, e.name, gz=e.kind == "nifti-gz", max_bytes=max_bytes)
        else:
            scan = raster.load_raster(e.path, e.name, kind=e.kind, max_bytes=max_bytes)
        used = [e.path]
    if g.n_empty:
        notes.append(f"{g.n_empty} empty file(s) were ignored")
    scan.notes.extend(notes)
    check_voxels(scan, g.label if len(used) > 1 else _name_of(g, used[0]))
    scan.content_hash = files_hash(used)
    return scan


def _name_of(g: Gathered, path: Path) -> str:
    for e in g.entries:
        if e.path == path:
            return e.name
    return path.name


def load_scan(paths: Paths, series_uid: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Scan:
    """Load one scan from a file, several files, a folder or a zip (see module docstring).

    Raises a ``ScanLoadError`` subclass on any failure; ``MultipleSeriesError`` (with
    ``.series``) when a DICOM upload holds several series and ``series_uid`` is None.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.ExitStack() as stack:
            try:
                g = gather(paths, stack, max_bytes)
                return _load(g, series_uid, max_bytes)
            except ScanLoadError:
                raise
            except MemoryError:
                raise FileTooLargeError("the upload is too large to load into memory") from None
            except BaseException as e:  # noqa: BLE001 - last line of defence: never a raw error
                if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                    raise
                raise CorruptFileError(
                    f"could not read the upload: unexpected {type(e).__name__} (corrupt file?)"
                ) from e


def list_series(paths: Paths, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, str]:
    """Series key (``anomaly.keys.series_key``: a salted hash, never the SeriesInstanceUID) ->
    description (modality, series description, number of images, rows x cols; no patient
    identifiers) of the DICOM series in an upload ({} if none). ``load_scan(series_uid=KEY)`` loads one."""
    from anomaly.io import dicom as dcm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.ExitStack() as stack:
            try:
                g = gather(paths, stack, max_bytes)
                dicom_entries = [e for e in g.entries if e.kind == "dicom"]
                if not dicom_entries:
                    return {}
                return dcm.list_series(dicom_entries, max_bytes)
            except ScanLoadError:
                raise
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                    raise
                raise CorruptFileError(
                    f"could not read the upload: unexpected {type(e).__name__} (corrupt file?)"
                ) from e
