"""Find the studies of a cohort: a folder (walked) or a CSV manifest with a ``path`` column.

A study is one item ``{"source", "files", "kind"}`` (``files`` a JSON list of paths): one
NIfTI volume, one PNG/JPEG/TIFF slice, one zip, or the files of one DICOM series (DICOM files
are grouped by folder and SeriesInstanceUID, read from the headers only). Files that look
like images but cannot be recognised are kept as studies, so that they are recorded as failed.
Items carry paths only; decoding happens in the workers.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from anomaly.errors import AnomalyError, DatasetError
from anomaly.io.loader import sniff

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".zip", ".dcm", ".dicom", ".ima")
SKIP_SUFFIXES = (".csv", ".json", ".md", ".txt", ".parquet", ".py", ".log", ".yaml", ".yml")
_KIND = {"nifti": "nifti", "nifti-gz": "nifti", "png": "png", "jpeg": "jpeg", "tiff": "tiff", "zip": "zip"}


def item(source: Path | str, files: list[Path] | list[str], kind: str) -> dict:
    return {"source": str(source), "files": json.dumps(sorted(str(f) for f in files)), "kind": kind}


def item_files(it: dict) -> list[Path]:
    return [Path(f) for f in json.loads(it["files"])]


def _looks_like_image(path: Path) -> bool:
    """Named like an image, or without a suffix (as DICOM files often are) and not plain text."""
    from anomaly.io.loader import _looks_like_text

    low = path.name.lower()
    return low.endswith(IMAGE_SUFFIXES) or ("." not in low and not _looks_like_text(path))


def dicom_groups(folder: Path, files: list[Path]) -> list[dict]:
    """One item per SeriesInstanceUID among the DICOM ``files`` of one folder (headers only)."""
    from anomaly.io import dicom as dcm

    headers = []
    out = []
    for f in files:
        try:
            h = dcm.read_header(f, f.name)
        except AnomalyError:  # corrupt header: its own (failing) study
            out.append(item(f, [f], "dicom"))
            continue
        if h is not None:
            headers.append(h)
    groups = {uid: [h.path for h in hs] for uid, hs in dcm.group_series(headers).items()}  # the loader's grouping
    for i, (_, paths) in enumerate(sorted(groups.items(), key=lambda kv: str(min(kv[1])))):
        src = folder if len(groups) == 1 else f"{folder}#series{i + 1}"
        out.append(item(src, paths, "dicom"))
    return out


def _kind(p: Path) -> str:
    try:
        k = sniff(p) if p.is_file() else None
    except OSError:
        return "unknown"
    return "dicom" if k == "dicom" else _KIND.get(k or "", "unknown")


def discover_folder(root: Path) -> list[dict]:
    """Every study under ``root`` (sorted by source path)."""
    items: list[dict] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folder_p = Path(folder)
        dicom: list[Path] = []
        for name in sorted(names):
            p = folder_p / name
            if name.startswith(".") or name.lower().endswith(SKIP_SUFFIXES) or not p.is_file():
                continue
            try:
                kind = sniff(p)
            except OSError:
                kind = None
            if kind == "dicom":
                dicom.append(p)
            elif kind in _KIND:
                items.append(item(p, [p], _KIND[kind]))
            elif _looks_like_image(p):
                items.append(item(p, [p], "unknown"))
        if dicom:
            items.extend(dicom_groups(folder_p, dicom))
    return sorted(items, key=lambda it: it["source"])


def discover_manifest(manifest: Path) -> list[dict]:
    """One study per row of a CSV with a ``path`` column (relative to the manifest's folder)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise DatasetError(f"{manifest.name}: a manifest needs a 'path' column")
    out = []
    for r in rows:
        p = Path(r["path"].strip())
        p = p if p.is_absolute() else manifest.parent / p
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        kind = "dicom" if p.is_dir() else _kind(p)
        out.append(item(p, files or [p], kind))
    return out


def discover(source: Path | str) -> list[dict]:
    """Studies of a folder, a CSV manifest, or a single file."""
    p = Path(source)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_dir():
        return discover_folder(p)
    if p.suffix.lower() == ".csv":
        return discover_manifest(p)
    return [item(p, [p], _kind(p))]
