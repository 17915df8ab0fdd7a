"""Scan loaders: DICOM (files, folders, zips, multi-frame, compressed), NIfTI, PNG/JPEG/TIFF.

``load_scan(paths, series_uid=None, max_bytes=DEFAULT_MAX_BYTES) -> Scan`` and
``list_series(paths) -> {series key: description}`` (a salted key, never the UID). Every failure is a
``anomaly.errors.ScanLoadError`` subclass with a message naming the file.
"""

from anomaly.io.loader import DEFAULT_MAX_BYTES, list_series, load_scan, sniff

__all__ = ["DEFAULT_MAX_BYTES", "list_series", "load_scan", "sniff"]
