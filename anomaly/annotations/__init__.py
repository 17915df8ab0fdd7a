"""Annotator workflow: flags on analysed scans (false positives, missed lesions, confirmed findings),
stored durably in SQLite (``store``), exported (``export``), driven by the UI (``service``,
``anomaly.ui.annotate``) and the CLI (``python -m anomaly.annotations``). See docs/annotations.md."""

from anomaly.annotations.store import (  # noqa: F401
    LABELS,
    REASONS,
    STATUSES,
    AnnotationError,
    Flag,
    InvalidRegionError,
    ReadOnlyError,
    StaleEditError,
    Store,
)

__all__ = ["LABELS", "REASONS", "STATUSES", "AnnotationError", "Flag", "InvalidRegionError", "ReadOnlyError",
           "StaleEditError", "Store"]
