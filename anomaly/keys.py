"""Study key (salted hash, never a patient identifier) and checkpoint hash: the join keys."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

SALT_ENV = "ANOMALY_STUDY_SALT"
DATA_DIR_ENV = "ANOMALY_DATA_DIR"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, Path.cwd() / "data"))


def study_salt() -> str:
    """The salt: $ANOMALY_STUDY_SALT, else a random one kept in ``data/.study_salt``."""
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV]
    path = data_dir() / ".study_salt"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    try:
        with open(path, "x") as f:
            f.write(salt)
    except FileExistsError:
        return path.read_text().strip()
    return salt


def study_key(identity: str, salt: str | None = None) -> str:
    """``sk-`` + 20 hex of sha256(salt | identity). ``identity`` is the StudyInstanceUID
    for DICOM, else the content hash of the file(s); it never leaves this function."""
    s = study_salt() if salt is None else salt
    return "sk-" + hashlib.sha256(f"{s}|{identity}".encode()).hexdigest()[:20]


def series_key(series_identity: str | None, salt: str | None = None) -> str:
    """``se-`` + 12 hex of sha256(salt | "series" | identity): a series named without its UID (the
    annotation store's series labels, the page's and the API's series chooser)."""
    s = study_salt() if salt is None else salt
    return "se-" + hashlib.sha256(f"{s}|series|{series_identity or ''}".encode()).hexdigest()[:12]


def content_hash(data: bytes | Path | list[Path]) -> str:
    """sha256 of bytes, of a file, or of several files (sorted by name)."""
    h = hashlib.sha256()
    if isinstance(data, bytes):
        h.update(data)
    else:
        paths = [data] if isinstance(data, (str, Path)) else sorted(data, key=lambda p: str(p))
        for p in paths:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def checkpoint_hash(path: Path) -> str:
    """First 16 hex of the sha256 of a weights file."""
    return content_hash(Path(path))[:16]
