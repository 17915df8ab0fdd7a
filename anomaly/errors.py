"""Typed exceptions of the project. Every error a user can cause is one of these."""

from __future__ import annotations


class AnomalyError(Exception):
    """Base class: a clear, user-facing message, never a stack trace."""


class ScanLoadError(AnomalyError):
    """A file could not be read as a scan."""


class UnsupportedFileError(ScanLoadError):
    """The file type is not one we read (or is not an image at all)."""


class CorruptFileError(ScanLoadError):
    """The file claims a known format but is truncated or corrupt."""


class EmptyFileError(ScanLoadError):
    """The file (or upload) holds no data."""


class FileTooLargeError(ScanLoadError):
    """The file or archive exceeds the size limit."""


class UnsafeArchiveError(ScanLoadError):
    """A zip with paths outside its root, or a zip bomb."""


class InvalidImageError(ScanLoadError):
    """Pixel data that cannot be analysed (NaN only, constant, too small, wrong dims)."""


class MultipleSeriesError(ScanLoadError):
    """An upload holds several DICOM series; the caller must choose one."""

    def __init__(self, message: str, series: dict[str, str] | None = None):
        super().__init__(message)
        self.series = series or {}


class DatasetError(AnomalyError):
    """A data-set folder does not follow the documented format."""


class CheckpointError(AnomalyError):
    """A checkpoint is missing, unsafe or does not match its card."""


class UnknownMethodError(AnomalyError):
    """No method is registered under that name."""


class StaleResultsError(AnomalyError):
    """Stored batch results do not fit the scan or the checkpoints any more (changed file, retrained
    model, missing maps): the study must be scored again."""


class TrainingInterrupted(AnomalyError):
    """Training was stopped (Ctrl-C, SIGTERM) after its state was saved: ``--resume`` continues it."""


class InvalidRequestError(AnomalyError, ValueError):
    """A request's argument is not one the app accepts (an unknown plane, ...); also a ValueError."""


class EngineStartError(AnomalyError):
    """The scale-out engine (Ray) could not be started or joined (a cluster address that does not
    answer, a local start that fails): batch scoring cannot run."""
