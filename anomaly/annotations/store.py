"""The annotation store: one embedded SQLite file, safe for many writers, never losing a flag.

Durability and concurrency
--------------------------
* WAL journal with ``synchronous=FULL``: a flag is on disk when ``add_flag`` returns, and a
  killed process (even SIGKILL mid-write) leaves a consistent database.
* Every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two
  writers never interleave a read-modify-write); a busy timeout makes writers wait, not fail.
* Optimistic concurrency: every flag carries a ``version``; ``update_flag(id, expected_version,
  ...)``, ``delete_flag`` and ``undo`` refuse a stale edit with ``StaleEditError`` and never
  overwrite silently.
* Soft delete only; every create / update / delete / undo / import is a row of ``flag_history``
  holding the full previous state, so any change can be undone and audited.

Schema
------
Versioned with a ``schema_version`` table; ``MIGRATIONS`` are applied in order, each in the same
write transaction as its version row. Tables: ``flags``, ``flag_history``, ``cases`` (review
status per study key) and ``slices`` (de-identified reviewed slices as 16-bit PNG blobs, so that
``export-dataset`` does not depend on the upload still existing).

No patient identifier is ever stored: studies are known by their salted study key
(``anomaly.keys.study_key``) and series by a salted series label (``series_label``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

import anomaly
from anomaly.annotations.config import default_db_path, is_read_only
from anomaly.errors import AnomalyError

LABELS = ("false_positive", "missed_lesion", "confirmed_finding")
REASONS = ("normal anatomy", "artefact", "noise", "partial volume", "other")
STATUSES = ("not started", "in review", "done")
PLANES = ("axial", "coronal", "sagittal")
EDITABLE = ("label", "reason", "note", "box", "mask")
BUSY_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------- errors


class AnnotationError(AnomalyError):
    """Base class of annotation errors (a clear message for the annotator)."""


class StaleEditError(AnnotationError):
    """The flag changed since the editor loaded it: the edit is refused, nothing is overwritten."""

    def __init__(self, message: str, flag_id: str = "", expected: int | None = None, current: "Flag | None" = None):
        super().__init__(message)
        self.flag_id = flag_id
        self.expected = expected
        self.current = current


class InvalidRegionError(AnnotationError):
    """A region outside the image, an empty box or mask, or a slice index out of range."""


class InvalidFlagError(AnnotationError):
    """A field of a flag is not one of the allowed values (label, reason, plane, ...)."""


class FlagNotFoundError(AnnotationError):
    """No flag with that id."""


class NothingToUndoError(AnnotationError):
    """There is no action left to undo."""


class ReadOnlyError(AnnotationError):
    """Read-only (demo) mode: nothing is stored."""


class SchemaError(AnnotationError):
    """The database was written by a newer version of the project."""


# ----------------------------------------------------------------------------- helpers


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def encode_mask(mask: np.ndarray) -> bytes:
    """A 2D boolean mask -> 1-bit PNG bytes."""
    m = np.asarray(mask, bool)
    buf = io.BytesIO()
    Image.fromarray(m.astype(np.uint8) * 255).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 0


def encode_slice(image: np.ndarray) -> tuple[bytes, float, float]:
    """A 2D float slice -> (16-bit PNG bytes, scale, offset); intensity = png / scale + offset."""
    a = np.nan_to_num(np.asarray(image, np.float64))
    offset = float(min(a.min(), 0.0)) if a.size else 0.0
    peak = float(a.max() - offset) if a.size else 0.0
    scale = 60000.0 / max(peak, 1e-6)
    out = np.clip(np.round((a - offset) * scale), 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue(), scale, offset


def decode_slice(data: bytes) -> np.ndarray:
    """16-bit PNG bytes -> uint16 array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).astype(np.uint16)


def series_label(series_identity: str | None, description: str = "", salt: str | None = None) -> str:
    """A salted, UID-free series label: ``se-`` + 12 hex of sha256(salt | series identity),
    plus the (identifier-free) description, e.g. ``se-0a1b2c3d4e5f (MR, 20 slices 256x256, ...)``."""
    from anomaly.keys import series_key

    h = series_key(series_identity, salt)
    return f"{h} ({description})" if description else h


def validate_region(shape: tuple[int, int], n_slices: int, slice_index: int, box=None, mask=None
                    ) -> tuple[list[int], np.ndarray]:
    """Checks a region and returns (box [r0, c0, r1, c1] half-open, full-slice boolean mask).

    ``mask`` (H, W) wins over ``box`` (the box becomes the mask's bounding box). Raises
    ``InvalidRegionError`` with a clear message for a slice index out of range, a box outside
    the image or empty, or an empty / wrongly shaped mask."""
    try:
        h, w = int(shape[0]), int(shape[1])
        n = int(n_slices)
    except (TypeError, ValueError, IndexError):
        raise InvalidRegionError(f"invalid slice shape {shape!r} / slice count {n_slices!r}") from None
    if h <= 0 or w <= 0 or n <= 0:
        raise InvalidRegionError(f"invalid image geometry: {n} slices of {h}x{w} pixels")
    try:
        idx = int(slice_index)
        if idx != float(slice_index):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidRegionError(f"slice index {slice_index!r} is not a whole number") from None
    if not 0 <= idx < n:
        raise InvalidRegionError(f"slice index {idx} is out of range: this scan has {n} slices (0-{n - 1})")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (h, w):
            raise InvalidRegionError(f"the region mask is {'x'.join(map(str, m.shape))} pixels but the slice is {h}x{w}")
        m = m.astype(bool)
        if not m.any():
            raise InvalidRegionError("the region mask is empty: mark at least one pixel")
        rows, cols = np.nonzero(m)
        return [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1], m
    if box is None:
        raise InvalidRegionError("no region given: give a box (row0, col0, row1, col1) or a mask")
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise InvalidRegionError(f"the box {box!r} must be four numbers row0, col0, row1, col1") from None
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise InvalidRegionError(f"the box {box!r} must be four finite numbers row0, col0, row1, col1")
    r0, c0, r1, c1 = (int(round(v)) for v in vals)
    if r1 <= r0 or c1 <= c0:
        raise InvalidRegionError(f"the box [{r0}, {c0}, {r1}, {c1}] is empty: row1 must be greater than row0 and "
                                 f"col1 greater than col0 (the box is half-open: rows row0..row1-1)")
    if r0 < 0 or c0 < 0 or r1 > h or c1 > w:
        raise InvalidRegionError(f"the box [{r0}, {c0}, {r1}, {c1}] is outside the {h}x{w} slice: rows must lie in "
                                 f"0..{h} and columns in 0..{w}")
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return [r0, c0, r1, c1], m


def _check_choice(name: str, value, allowed, optional: bool = False):
    if value is None or value == "":
        if optional:
            return None
        raise InvalidFlagError(f"{name} is required: one of {', '.join(map(repr, allowed))}")
    if value not in allowed:
        raise InvalidFlagError(f"{name} {value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


MAX_NOTE_CHARS = 2000  # a note is a remark on a region, not a report (a 5-MB note filled every list)


def _check_note(note) -> str:
    note = str(note or "")
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidFlagError(f"a note holds at most {MAX_NOTE_CHARS} characters (this one has {len(note)})")
    return note


def _check_reason(label: str, reason):
    reason = _check_choice("reason", reason, REASONS, optional=True)
    if label == "false_positive" and reason is None:
        raise InvalidFlagError(f"a false positive needs a reason: one of {', '.join(map(repr, REASONS))}")
    return reason


# ----------------------------------------------------------------------------- records


@dataclass
class Flag:
    id: str
    study_key: str
    series: str
    plane: str
    slice_index: int
    n_slices: int
    height: int
    width: int
    method: str
    checkpoint_hash: str
    threshold: float | None
    box: list[int]
    mask_png: bytes = field(repr=False)
    label: str
    reason: str | None
    note: str
    reviewer: str
    updated_by: str
    created_at: str
    updated_at: str
    version: int
    deleted: bool
    project_version: str

    @property
    def mask(self) -> np.ndarray:
        return decode_mask(self.mask_png)

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    def to_dict(self, include_mask: bool = True) -> dict:
        d = {k: getattr(self, k) for k in _FLAG_COLS if k != "mask_png"}
        d["box"] = list(self.box)
        d["deleted"] = bool(self.deleted)
        if include_mask:
            d["mask_png_b64"] = base64.b64encode(self.mask_png).decode()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Flag":
        kw = {k: d.get(k) for k in _FLAG_COLS if k != "mask_png"}
        kw["mask_png"] = base64.b64decode(d["mask_png_b64"]) if d.get("mask_png_b64") else b""
        kw["box"] = [int(v) for v in (d.get("box") or [])]
        kw["deleted"] = bool(d.get("deleted"))
        kw["version"] = int(d.get("version") or 1)
        kw["note"] = d.get("note") or ""
        kw["updated_by"] = d.get("updated_by") or d.get("reviewer") or ""
        return cls(**kw)


_FLAG_COLS = [f for f in Flag.__dataclass_fields__]


def _flag_from_row(row: sqlite3.Row) -> Flag:
    d = dict(row)
    d["box"] = json.loads(d["box"])
    d["deleted"] = bool(d["deleted"])
    d["note"] = d["note"] or ""
    return Flag(**{k: d[k] for k in _FLAG_COLS})


def _state_json(row: sqlite3.Row | None) -> str | None:
    """The full state of a flag row, for the history table (mask as base64 PNG)."""
    if row is None:
        return None
    d = dict(row)
    d["mask_png_b64"] = base64.b64encode(d.pop("mask_png")).decode()
    d["box"] = json.loads(d["box"])
    return json.dumps(d, sort_keys=True)


@dataclass
class Case:
    study_key: str
    status: str
    series: str
    source: str
    modality: str
    plane: str
    shape: list[int]
    spacing: list[float]
    reviewer: str
    created_at: str
    updated_at: str
    version: int
    n_flags: int = 0
    n_false_positives: int = 0
    n_slices_stored: int = 0
    methods: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- schema


def _m1_initial(c: sqlite3.Connection) -> None:
    c.execute("""CREATE TABLE flags (
        id TEXT PRIMARY KEY,
        study_key TEXT NOT NULL,
        series TEXT NOT NULL DEFAULT '',
        plane TEXT NOT NULL CHECK (plane IN ('axial', 'coronal', 'sagittal')),
        slice_index INTEGER NOT NULL CHECK (slice_index >= 0),
        n_slices INTEGER NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        method TEXT NOT NULL,
        checkpoint_hash TEXT NOT NULL DEFAULT '',
        threshold REAL,
        box TEXT NOT NULL,
        mask_png BLOB NOT NULL,
        label TEXT NOT NULL CHECK (label IN ('false_positive', 'missed_lesion', 'confirmed_finding')),
        reason TEXT CHECK (reason IS NULL OR reason IN ('normal anatomy', 'artefact', 'noise', 'partial volume', 'other')),
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        deleted INTEGER NOT NULL DEFAULT 0,
        project_version TEXT NOT NULL
    )""")
    c.execute("""CREATE TABLE flag_history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        flag_id TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'undo', 'import')),
        version INTEGER NOT NULL,
        previous TEXT,
        reviewer TEXT NOT NULL,
        at TEXT NOT NULL,
        undone INTEGER NOT NULL DEFAULT 0
    )""")
    c.execute("""CREATE TABLE cases (
        study_key TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'not started' CHECK (status IN ('not started', 'in review', 'done')),
        series TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        plane TEXT NOT NULL DEFAULT 'axial',
        shape TEXT NOT NULL DEFAULT '[]',
        spacing TEXT NOT NULL DEFAULT '[]',
        reviewer TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
    )""")
    c.execute("""CREATE TABLE slices (
        study_key TEXT NOT NULL,
        plane TEXT NOT NULL,
        slice_index INTEGER NOT NULL,
        image_png BLOB NOT NULL,
        scale REAL NOT NULL,
        offset REAL NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        row_spacing REAL NOT NULL,
        col_spacing REAL NOT NULL,
        reviewer TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (study_key, plane, slice_index)
    )""")


def _m2_indexes(c: sqlite3.Connection) -> None:
    c.execute("CREATE INDEX flags_study ON flags (study_key, deleted)")
    c.execute("CREATE INDEX flags_method ON flags (method)")
    c.execute("CREATE INDEX history_flag ON flag_history (flag_id, seq)")


MIGRATIONS: list[tuple[str, callable]] = [
    ("initial schema: flags, flag_history, cases, slices", _m1_initial),
    ("indexes on study key, method and history", _m2_indexes),
]
SCHEMA_VERSION = len(MIGRATIONS)


# ----------------------------------------------------------------------------- the store


class _Closer:
    """Closes a thread's connection when that thread's slot of a Store goes (the thread ended, or the
    Store was dropped). A sqlite3 connection sits in a reference cycle with its statement cache, so a
    dropped one stayed open until a garbage collection, and a process forked meanwhile inherited it:
    SQLite's locking then failed silently in the children and concurrent writers lost committed flags.
    A connection inherited from a parent process is never closed here (closing it would release this
    process's own locks on the file)."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.pid = conn, os.getpid()

    def __del__(self) -> None:
        if self.pid != os.getpid():
            _INHERITED.append(self.conn)  # kept open for good: its garbage collection would close it
            return
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, or closed already
            pass


_INHERITED: list = []  # in a forked child: connections of the parent that the child dropped


def _db_problem(path: Path, e: Exception) -> str:
    """A sqlite3 error as a reader-facing sentence (what went wrong with the database file)."""
    msg = str(e)
    if "not a database" in msg:
        return f"{path} is not an annotation database (SQLite) file, or it is damaged"
    if "readonly" in msg or "read-only" in msg:
        return f"the annotation database {path} is read-only here (file or folder permissions)"
    if "full" in msg:
        return f"the disk holding the annotation database {path} is full"
    if "unable to open" in msg:
        return f"cannot open the annotation database {path} (missing folder or permissions)"
    return f"the annotation database {path} could not be used: {msg}"


class Store:
    """The annotation database. One instance may be shared by threads (one connection per thread
    and process); any number of processes may open the same file."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool | None = None,
                 timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path) if path else default_db_path()
        self.read_only = is_read_only() if read_only is None else bool(read_only)
        self.timeout = float(timeout)
        self._local = threading.local()
        if self.path.is_dir():
            raise AnnotationError(f"{self.path} is a folder, not an annotation database file")
        if not self.read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._migrate()
            except sqlite3.DatabaseError as e:
                raise AnnotationError(_db_problem(self.path, e)) from None
            except OSError as e:
                raise AnnotationError(f"cannot open the annotation database {self.path}: {e.strerror or e}") from None

    # -- connections

    def _connect(self) -> sqlite3.Connection | None:
        if self.read_only:
            if not self.path.exists():
                return None
            c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout,
                                isolation_level=None, check_same_thread=False)
        else:
            c = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False)
        c.row_factory = sqlite3.Row
        c.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if not self.read_only:
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AnnotationError(f"cannot use WAL journaling on {self.path} (got {mode}): use a local disk")
            c.execute("PRAGMA synchronous = FULL")
        c.execute("PRAGMA foreign_keys = ON")
        return c

    def _conn(self) -> sqlite3.Connection | None:
        loc = self._local
        if getattr(loc, "conn", None) is None or getattr(loc, "pid", None) != os.getpid():
            loc.conn = self._connect()
            loc.pid = os.getpid()
            loc.closer = _Closer(loc.conn) if loc.conn is not None else None
        return loc.conn

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None and getattr(self._local, "pid", None) == os.getpid():
            c.close()
        self._local.conn = None

    @contextmanager
    def _write(self):
        """One ``BEGIN IMMEDIATE`` transaction; rolled back on any error."""
        if self.read_only:
            raise ReadOnlyError("read-only demo mode: annotations are not stored (set ANOMALY_READ_ONLY=0 and "
                                "run the app on your own server to annotate)")
        c = self._conn()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                c.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:  # the busy handler gave up early: wait more
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise AnnotationError(f"the annotation database {self.path} is busy: {e}; try again") from e
                time.sleep(0.05)
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):  # disk full, a read-only file, a damaged file: nothing was written
                raise AnnotationError(_db_problem(self.path, e) + "; nothing was written, saved annotations are "
                                      "unchanged") from None
            raise

    def _read(self, sql: str, args=()) -> list[sqlite3.Row]:
        c = self._conn()
        if c is None:
            return []
        try:
            return c.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            if self.read_only and "no such table" in str(e):  # a read-only view of a store not yet created
                return []
            raise AnnotationError(_db_problem(self.path, e)) from None

    def _migrate(self) -> None:
        c = self._conn()
        try:
            have = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        except sqlite3.OperationalError:
            have = 0
        if have == SCHEMA_VERSION:
            return
        if have > SCHEMA_VERSION:
            raise SchemaError(f"{self.path} has schema version {have}, newer than this project's "
                              f"{SCHEMA_VERSION}: upgrade the project")
        with self._write() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                      "description TEXT NOT NULL, applied_at TEXT NOT NULL)")
            have = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0  # re-read under lock
            if have > SCHEMA_VERSION:
                raise SchemaError(f"{self.path} has schema version {have}, newer than this project's "
                                  f"{SCHEMA_VERSION}: upgrade the project")
            for v in range(have + 1, SCHEMA_VERSION + 1):
                desc, fn = MIGRATIONS[v - 1]
                fn(c)
                c.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                          (v, desc, now()))

    def is_own_file(self, path: str | Path) -> bool:
        """Whether ``path`` is this database or one of its WAL / shared-memory / journal files (an export
        or a backup written there would destroy it)."""
        db = str(self.path.resolve())
        return str(Path(path).resolve()) in {db + x for x in ("", "-wal", "-shm", "-journal")}

    def backup(self, out: str | Path) -> Path:
        """A complete copy of the database (flags, history, cases, reviewed slices) made with SQLite's
        online backup, consistent while others write; written beside ``out`` and renamed into place."""
        out = Path(out)
        if self.is_own_file(out):
            raise AnnotationError(f"{out} is the annotation database itself: give another file")
        if not self.path.exists():
            raise AnnotationError(f"no annotation database at {self.path}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        try:
            src = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout)
            try:
                dst = sqlite3.connect(str(tmp))
                try:
                    src.backup(dst)
                finally:
                    dst.close()
            finally:
                src.close()
            tmp.replace(out)
        except (sqlite3.Error, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise AnnotationError(f"backup not written ({_db_problem(self.path, e) if isinstance(e, sqlite3.Error) else e}); "
                                  f"an earlier {out.name} is kept") from None
        return out

    def schema_version(self) -> int:
        rows = self._read("SELECT MAX(version) AS v FROM schema_version")
        return int(rows[0]["v"] or 0) if rows else 0

    def integrity_check(self) -> str:
        c = self._conn()
        if c is None:
            return "ok"
        return ", ".join(r[0] for r in c.execute("PRAGMA integrity_check").fetchall())

    # -- flags

    def add_flag(self, *, study_key: str, plane: str, slice_index: int, shape: tuple[int, int], n_slices: int,
                 method: str, label: str, reviewer: str, reason: str | None = None, note: str = "",
                 box=None, mask=None, checkpoint_hash: str = "", threshold: float | None = None,
                 series: str = "", flag_id: str | None = None, refuse_repeat_within_s: float | None = None) -> Flag:
        """Validates and stores one flag (version 1); returns it once it is durably committed. With
        ``refuse_repeat_within_s``, the same flag (reviewer, study, slice, method, label, region) stored
        that recently is refused (``InvalidFlagError``): a double click, checked under the write lock so
        that requests sent at the same instant cannot both pass."""
        label = _check_choice("label", label, LABELS)
        reason = _check_reason(label, reason)
        note = _check_note(note)
        plane = _check_choice("plane", plane, PLANES)
        if not study_key or not str(study_key).strip():
            raise InvalidFlagError("a flag needs a study key")
        if not method or not str(method).strip():
            raise InvalidFlagError("a flag needs the method it is about")
        if not reviewer or not str(reviewer).strip():
            raise InvalidFlagError("a flag needs a reviewer (log in to annotate)")
        box, m = validate_region(shape, n_slices, slice_index, box, mask)
        t = now()
        fid = flag_id or str(uuid.uuid4())
        row = (fid, str(study_key), series or "", plane, int(slice_index), int(n_slices), int(shape[0]), int(shape[1]),
               str(method), checkpoint_hash or "", None if threshold is None else float(threshold), json.dumps(box),
               encode_mask(m), label, reason, str(note or ""), str(reviewer), str(reviewer), t, t, 1, 0,
               anomaly.__version__)
        with self._write() as c:
            if refuse_repeat_within_s:
                since = (datetime.fromisoformat(t) - timedelta(seconds=float(refuse_repeat_within_s))).isoformat()
                same = c.execute("SELECT id, created_at FROM flags WHERE study_key = ? AND plane = ? AND slice_index = ? "
                                 "AND n_slices = ? AND method = ? AND label = ? AND reviewer = ? AND mask_png = ? "
                                 "AND deleted = 0 AND created_at >= ? ORDER BY created_at DESC LIMIT 1",
                                 (str(study_key), plane, int(slice_index), int(n_slices), str(method), label,
                                  str(reviewer), row[12], since)).fetchone()
                if same:
                    raise InvalidFlagError(f"this flag was just added (flag {same['id'][:8]}): not stored twice")
            c.execute(f"INSERT INTO flags ({', '.join(_FLAG_COLS)}) VALUES ({', '.join('?' * len(_FLAG_COLS))})", row)
            c.execute("INSERT INTO flag_history (flag_id, action, version, previous, reviewer, at) VALUES (?, ?, ?, ?, ?, ?)",
                      (fid, "create", 1, None, str(reviewer), t))
            self._touch_case(c, str(study_key), str(reviewer), series, t)
        return self.get_flag(fid)

    def _touch_case(self, c: sqlite3.Connection, study_key: str, reviewer: str, series: str, t: str) -> None:
        """A flagged case is at least 'in review'."""
        c.execute("INSERT OR IGNORE INTO cases (study_key, status, series, reviewer, created_at, updated_at) "
                  "VALUES (?, 'in review', ?, ?, ?, ?)", (study_key, series or "", reviewer, t, t))
        c.execute("UPDATE cases SET status = 'in review', updated_at = ?, reviewer = ?, version = version + 1 "
                  "WHERE study_key = ? AND status = 'not started'", (t, reviewer, study_key))

    def get_flag(self, flag_id: str, include_deleted: bool = True) -> Flag:
        rows = self._read("SELECT * FROM flags WHERE id = ?", (str(flag_id),))
        if not rows or (rows[0]["deleted"] and not include_deleted):
            raise FlagNotFoundError(f"no flag {flag_id!r}")
        return _flag_from_row(rows[0])

    def list_flags(self, study_key: str | None = None, *, method: str | None = None, label: str | None = None,
                   plane: str | None = None, slice_index: int | None = None, include_deleted: bool = False) -> list[Flag]:
        where, args = [], []
        for col, v in (("study_key", study_key), ("method", method), ("label", label), ("plane", plane),
                       ("slice_index", slice_index)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        if not include_deleted:
            where.append("deleted = 0")
        sql = "SELECT * FROM flags" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at, id"
        return [_flag_from_row(r) for r in self._read(sql, args)]

    def count_flags(self, include_deleted: bool = False) -> int:
        rows = self._read("SELECT COUNT(*) AS n FROM flags" + ("" if include_deleted else " WHERE deleted = 0"))
        return int(rows[0]["n"]) if rows else 0

    def _locked_row(self, c: sqlite3.Connection, flag_id: str, expected_version: int | None, what: str) -> sqlite3.Row:
        row = c.execute("SELECT * FROM flags WHERE id = ?", (str(flag_id),)).fetchone()
        if row is None:
            raise FlagNotFoundError(f"no flag {flag_id!r}")
        if expected_version is not None and int(expected_version) != int(row["version"]):
            cur = _flag_from_row(row)
            raise StaleEditError(
                f"stale {what} refused: flag {str(flag_id)[:8]} is now at version {row['version']} (changed by "
                f"{row['updated_by']} at {row['updated_at'][:19].replace('T', ' ')} UTC) but your {what} was based on "
                f"version {int(expected_version)}. Nothing was saved: reload the flag list and apply your {what} again.",
                str(flag_id), int(expected_version), cur)
        return row

    def _history(self, c, flag_id: str, action: str, version: int, previous: sqlite3.Row | None, reviewer: str,
                 t: str) -> None:
        c.execute("INSERT INTO flag_history (flag_id, action, version, previous, reviewer, at) VALUES (?, ?, ?, ?, ?, ?)",
                  (str(flag_id), action, version, _state_json(previous), str(reviewer), t))

    def update_flag(self, flag_id: str, expected_version: int, *, reviewer: str, **changes) -> Flag:
        """Changes label / reason / note / region (box or mask) of a flag at ``expected_version``.

        Raises ``StaleEditError`` if the flag changed since (never overwrites), ``InvalidFlagError`` /
        ``InvalidRegionError`` for bad values."""
        unknown = set(changes) - set(EDITABLE)
        if unknown:
            raise InvalidFlagError(f"cannot edit {', '.join(sorted(unknown))}: only {', '.join(EDITABLE)}")
        if expected_version is None:
            raise StaleEditError("an edit must say which version of the flag it is based on", str(flag_id))
        if not reviewer:
            raise InvalidFlagError("an edit needs a reviewer (log in to annotate)")
        t = now()
        with self._write() as c:
            row = self._locked_row(c, flag_id, expected_version, "edit")
            if row["deleted"]:
                raise StaleEditError(f"flag {str(flag_id)[:8]} was removed (by {row['updated_by']}): undo the removal "
                                     "before editing it", str(flag_id), int(expected_version), _flag_from_row(row))
            label = _check_choice("label", changes.get("label", row["label"]), LABELS)
            reason = _check_reason(label, changes.get("reason", row["reason"]))
            note = _check_note(changes.get("note", row["note"]))
            box, mask_png = row["box"], row["mask_png"]
            if "box" in changes or "mask" in changes:
                b, m = validate_region((row["height"], row["width"]), row["n_slices"], row["slice_index"],
                                       changes.get("box"), changes.get("mask"))
                box, mask_png = json.dumps(b), encode_mask(m)
            v = int(row["version"]) + 1
            cur = c.execute("UPDATE flags SET label = ?, reason = ?, note = ?, box = ?, mask_png = ?, updated_by = ?, "
                            "updated_at = ?, version = ? WHERE id = ? AND version = ?",
                            (label, reason, note, box, mask_png, str(reviewer), t, v, str(flag_id), int(row["version"])))
            if cur.rowcount != 1:  # cannot happen under the write lock; refuse rather than overwrite
                raise StaleEditError(f"flag {str(flag_id)[:8]} changed during the edit: nothing was saved",
                                     str(flag_id), int(expected_version))
            self._history(c, flag_id, "update", v, row, reviewer, t)
        return self.get_flag(flag_id)

    def delete_flag(self, flag_id: str, expected_version: int | None = None, *, reviewer: str) -> Flag:
        """Soft delete (``undo`` restores it)."""
        if not reviewer:
            raise InvalidFlagError("removing a flag needs a reviewer (log in to annotate)")
        t = now()
        with self._write() as c:
            row = self._locked_row(c, flag_id, expected_version, "removal")
            if row["deleted"]:
                return _flag_from_row(row)
            v = int(row["version"]) + 1
            c.execute("UPDATE flags SET deleted = 1, updated_by = ?, updated_at = ?, version = ? WHERE id = ?",
                      (str(reviewer), t, v, str(flag_id)))
            self._history(c, flag_id, "delete", v, row, reviewer, t)
        return self.get_flag(flag_id)

    def undo(self, flag_id: str, *, reviewer: str, expected_version: int | None = None) -> Flag:
        """Reverts the latest not-yet-undone create / update / delete / import of a flag: a removal is
        restored, an edit reverted to the previous state, a creation removed. Repeated undos walk back
        through the history; each undo is itself a history row."""
        if not reviewer:
            raise InvalidFlagError("undo needs a reviewer (log in to annotate)")
        t = now()
        with self._write() as c:
            row = self._locked_row(c, flag_id, expected_version, "undo")
            h = c.execute("SELECT * FROM flag_history WHERE flag_id = ? AND action != 'undo' AND undone = 0 "
                          "ORDER BY seq DESC LIMIT 1", (str(flag_id),)).fetchone()
            if h is None:
                raise NothingToUndoError(f"nothing left to undo on flag {str(flag_id)[:8]}")
            v = int(row["version"]) + 1
            if h["previous"] is None:  # undo a creation / import: remove it
                c.execute("UPDATE flags SET deleted = 1, updated_by = ?, updated_at = ?, version = ? WHERE id = ?",
                          (str(reviewer), t, v, str(flag_id)))
            else:
                p = json.loads(h["previous"])
                c.execute("UPDATE flags SET label = ?, reason = ?, note = ?, box = ?, mask_png = ?, deleted = ?, "
                          "updated_by = ?, updated_at = ?, version = ? WHERE id = ?",
                          (p["label"], p["reason"], p["note"], json.dumps(p["box"]),
                           base64.b64decode(p["mask_png_b64"]), int(p["deleted"]), str(reviewer), t, v, str(flag_id)))
            c.execute("UPDATE flag_history SET undone = 1 WHERE seq = ?", (h["seq"],))
            self._history(c, flag_id, "undo", v, row, reviewer, t)
        return self.get_flag(flag_id)

    def last_undoable(self, study_key: str, reviewer: str | None = None) -> str | None:
        """Id of the flag of ``study_key`` with the latest undoable action (by ``reviewer`` if given)."""
        sql = ("SELECT h.flag_id FROM flag_history h JOIN flags f ON f.id = h.flag_id WHERE f.study_key = ? "
               "AND h.action != 'undo' AND h.undone = 0")
        args: list = [study_key]
        if reviewer:
            sql += " AND h.reviewer = ?"
            args.append(reviewer)
        rows = self._read(sql + " ORDER BY h.seq DESC LIMIT 1", args)
        return rows[0]["flag_id"] if rows else None

    def last_flag_change(self, study_key: str) -> tuple[str, str] | None:
        """(reviewer, time) of the latest change to any flag of ``study_key`` (an undo included)."""
        rows = self._read("SELECT h.reviewer, h.at FROM flag_history h JOIN flags f ON f.id = h.flag_id "
                          "WHERE f.study_key = ? ORDER BY h.seq DESC LIMIT 1", (str(study_key),))
        return (rows[0]["reviewer"], rows[0]["at"]) if rows else None

    def history(self, flag_id: str) -> list[dict]:
        out = []
        for r in self._read("SELECT * FROM flag_history WHERE flag_id = ? ORDER BY seq", (str(flag_id),)):
            d = dict(r)
            d["previous"] = json.loads(d["previous"]) if d["previous"] else None
            d["undone"] = bool(d["undone"])
            out.append(d)
        return out

    def import_flag(self, flag: Flag, *, reviewer: str) -> bool:
        """Inserts a flag exported elsewhere, keeping its id; returns False (and changes nothing) if a
        flag with that id already exists."""
        return self.import_flags([flag], reviewer=reviewer)["imported"] == 1

    def import_flags(self, flags: list[Flag], *, reviewer: str) -> dict:
        """Inserts flags exported elsewhere, keeping their ids, all or none (every flag is checked before
        anything is written, in one transaction). A flag whose id is stored already is skipped;
        ``newer_skipped`` counts those whose export holds a higher version than the store's (another
        station's later edit, not merged). Returns {"imported", "skipped", "newer_skipped"}."""
        rows = []
        for i, fl in enumerate(flags):
            try:
                rows.append(self._import_row(fl))
            except AnnotationError as e:
                raise AnnotationError(f"flag #{i}: {e}") from None
        t = now()
        out = {"imported": 0, "skipped": 0, "newer_skipped": 0}
        with self._write() as c:
            for i, (fl, d) in enumerate(zip(flags, rows)):
                have = c.execute("SELECT version FROM flags WHERE id = ?", (fl.id,)).fetchone()
                if have:
                    out["skipped"] += 1
                    out["newer_skipped"] += int(d["version"] > int(have[0]))
                    continue
                try:
                    c.execute(f"INSERT INTO flags ({', '.join(_FLAG_COLS)}) VALUES ({', '.join('?' * len(_FLAG_COLS))})",
                              [d[k] for k in _FLAG_COLS])
                except sqlite3.IntegrityError as e:
                    raise AnnotationError(f"flag #{i} lacks a required field ({e}); nothing was imported") from None
                self._history(c, fl.id, "import", d["version"], None, reviewer, t)
                c.execute("INSERT OR IGNORE INTO cases (study_key, status, series, reviewer, created_at, updated_at) "
                          "VALUES (?, 'in review', ?, ?, ?, ?)", (fl.study_key, fl.series or "", reviewer, t, t))
                out["imported"] += 1
        return out

    def _import_row(self, flag: Flag) -> dict:
        """The row of an imported flag, after the checks an added flag gets (typed errors)."""
        for name in ("id", "study_key", "method", "created_at", "reviewer"):
            if not isinstance(getattr(flag, name, None), str) or not getattr(flag, name):
                raise AnnotationError(f"no {name}")
        label = _check_choice("label", flag.label, LABELS)
        _check_reason(label, flag.reason)
        _check_choice("plane", flag.plane, PLANES)
        if flag.mask_png:
            try:
                m = decode_mask(flag.mask_png)
            except Exception:  # noqa: BLE001 - PIL's errors on bytes that are no PNG
                raise AnnotationError("its mask is not a readable PNG") from None
            box, m = validate_region((flag.height, flag.width), flag.n_slices, flag.slice_index, None, m)
        else:
            box, m = validate_region((flag.height, flag.width), flag.n_slices, flag.slice_index, flag.box, None)
        d = flag.to_dict(include_mask=False)
        d.update(box=json.dumps(box), mask_png=encode_mask(m), deleted=int(bool(flag.deleted)),
                 version=int(flag.version or 1), note=flag.note or "", updated_by=flag.updated_by or flag.reviewer)
        return d

    # -- cases

    def ensure_case(self, study_key: str, *, series: str = "", source: str = "", modality: str = "", plane: str = "axial",
                    shape=(), spacing=(), reviewer: str = "") -> None:
        """Creates the case row if missing and fills in its geometry (never changes the status)."""
        t = now()
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO cases (study_key, series, source, modality, plane, shape, spacing, reviewer, "
                      "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (study_key, series, source, modality, plane, json.dumps([int(x) for x in shape]),
                       json.dumps([float(x) for x in spacing]), reviewer, t, t))
            c.execute("UPDATE cases SET series = CASE WHEN series = '' THEN ? ELSE series END, source = ?, modality = ?, "
                      "plane = ?, shape = ?, spacing = ? WHERE study_key = ?",
                      (series, source, modality, plane, json.dumps([int(x) for x in shape]),
                       json.dumps([float(x) for x in spacing]), study_key))

    def set_case_status(self, study_key: str, status: str, *, reviewer: str, expected_version: int | None = None) -> Case:
        status = _check_choice("status", status, STATUSES)
        if not reviewer:
            raise InvalidFlagError("setting the review status needs a reviewer (log in to annotate)")
        t = now()
        with self._write() as c:
            row = c.execute("SELECT * FROM cases WHERE study_key = ?", (study_key,)).fetchone()
            if row is None:
                c.execute("INSERT INTO cases (study_key, status, reviewer, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                          (study_key, status, reviewer, t, t))
            else:
                if expected_version is not None and int(expected_version) != int(row["version"]):
                    raise StaleEditError(f"stale status change refused: case {study_key} is now '{row['status']}' "
                                         f"(set by {row['reviewer']}, version {row['version']}, you had version "
                                         f"{int(expected_version)}): reload and try again", study_key, int(expected_version))
                c.execute("UPDATE cases SET status = ?, reviewer = ?, updated_at = ?, version = version + 1 "
                          "WHERE study_key = ?", (status, reviewer, t, study_key))
        return self.get_case(study_key)

    def get_case(self, study_key: str) -> Case | None:
        rows = self.list_cases(study_key=study_key)
        return rows[0] if rows else None

    def list_cases(self, *, status: str | None = None, method: str | None = None, study_key: str | None = None
                   ) -> list[Case]:
        """Cases (oldest first) with their flag counts; ``method`` keeps the cases with a live flag of that method."""
        where, args = [], []
        if status:
            where.append("c.status = ?")
            args.append(status)
        if study_key:
            where.append("c.study_key = ?")
            args.append(study_key)
        if method:
            where.append("EXISTS (SELECT 1 FROM flags f WHERE f.study_key = c.study_key AND f.deleted = 0 AND f.method = ?)")
            args.append(method)
        sql = ("SELECT c.*, "
               "(SELECT COUNT(*) FROM flags f WHERE f.study_key = c.study_key AND f.deleted = 0) AS n_flags, "
               "(SELECT COUNT(*) FROM flags f WHERE f.study_key = c.study_key AND f.deleted = 0 "
               " AND f.label = 'false_positive') AS n_fp, "
               "(SELECT COUNT(*) FROM slices s WHERE s.study_key = c.study_key) AS n_slices_stored, "
               "(SELECT GROUP_CONCAT(DISTINCT f.method) FROM flags f WHERE f.study_key = c.study_key AND f.deleted = 0) "
               " AS methods FROM cases c" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY c.created_at, c.study_key")
        out = []
        for r in self._read(sql, args):
            out.append(Case(r["study_key"], r["status"], r["series"], r["source"], r["modality"], r["plane"],
                            json.loads(r["shape"] or "[]"), json.loads(r["spacing"] or "[]"), r["reviewer"],
                            r["created_at"], r["updated_at"], int(r["version"]), int(r["n_flags"]), int(r["n_fp"]),
                            int(r["n_slices_stored"]), sorted((r["methods"] or "").split(",")) if r["methods"] else []))
        return out

    # -- de-identified reviewed slices

    def put_slice(self, study_key: str, plane: str, slice_index: int, image: np.ndarray,
                  spacing: tuple[float, float] = (1.0, 1.0), *, reviewer: str) -> bool:
        """Keeps a reviewed slice (pixels only, as a 16-bit PNG); returns False if it was already stored."""
        plane = _check_choice("plane", plane, PLANES)
        img = np.asarray(image)
        if img.ndim != 2 or img.size == 0:
            raise InvalidRegionError(f"a reviewed slice must be a 2D image, got shape {img.shape}")
        png, scale, offset = encode_slice(img)
        with self._write() as c:
            cur = c.execute("INSERT OR IGNORE INTO slices (study_key, plane, slice_index, image_png, scale, offset, height, "
                            "width, row_spacing, col_spacing, reviewer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (study_key, plane, int(slice_index), png, scale, offset, img.shape[0], img.shape[1],
                             float(spacing[0]), float(spacing[1]), reviewer, now()))
            return cur.rowcount == 1

    def list_slices(self, study_key: str | None = None, with_pixels: bool = True) -> list[dict]:
        cols = "*" if with_pixels else ("study_key, plane, slice_index, scale, offset, height, width, row_spacing, "
                                         "col_spacing, reviewer, created_at")
        sql = f"SELECT {cols} FROM slices" + (" WHERE study_key = ?" if study_key else "") + \
            " ORDER BY study_key, plane, slice_index"
        return [dict(r) for r in self._read(sql, (study_key,) if study_key else ())]

    def get_slice(self, study_key: str, plane: str, slice_index: int) -> dict | None:
        rows = self._read("SELECT * FROM slices WHERE study_key = ? AND plane = ? AND slice_index = ?",
                          (study_key, plane, int(slice_index)))
        return dict(rows[0]) if rows else None


__all__ = ["Store", "Flag", "Case", "LABELS", "REASONS", "STATUSES", "AnnotationError", "StaleEditError",
           "InvalidRegionError", "InvalidFlagError", "FlagNotFoundError", "NothingToUndoError", "ReadOnlyError",
           "SchemaError", "validate_region", "series_label", "encode_mask", "decode_mask", "decode_slice",
           "SCHEMA_VERSION", "MIGRATIONS"]
