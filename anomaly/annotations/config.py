"""Where annotations live and whether they may be written (environment settings).

* ``ANOMALY_ANNOTATIONS_DB``: the SQLite file (default ``$ANOMALY_DATA_DIR/annotations.sqlite``,
  ``./data`` when ``ANOMALY_DATA_DIR`` is unset). ``--db PATH`` of the CLI overrides it.
* ``ANOMALY_READ_ONLY=1``: read-only demo mode (everything is shown, nothing is stored). It is the
  default on a Hugging Face Space (``SPACE_ID`` set) unless ``ANOMALY_READ_ONLY=0``.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomaly.keys import data_dir

DB_ENV = "ANOMALY_ANNOTATIONS_DB"
READ_ONLY_ENV = "ANOMALY_READ_ONLY"
SPACE_ENV = "SPACE_ID"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def default_db_path() -> Path:
    """``$ANOMALY_ANNOTATIONS_DB``, else ``$ANOMALY_DATA_DIR/annotations.sqlite`` (./data by default)."""
    env = os.environ.get(DB_ENV, "").strip()
    return Path(env) if env else data_dir() / "annotations.sqlite"


def is_read_only() -> bool:
    """Read-only demo mode: ``ANOMALY_READ_ONLY`` if set, else on whenever ``SPACE_ID`` is set."""
    v = os.environ.get(READ_ONLY_ENV, "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return bool(os.environ.get(SPACE_ENV, "").strip())
