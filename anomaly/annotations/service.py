"""Annotation callbacks as plain functions (the UI in ``anomaly.ui.annotate`` only wraps them).

Functions that write take the session ``token`` (from ``auth.login``) and check it on every call;
functions about the loaded scan take the analysis ``key`` of ``anomaly.ui.callbacks`` and fetch
the analysis with ``get_analysis(key)``. Nothing here reads or returns a patient identifier.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from anomaly.annotations import auth
from anomaly.annotations import export as ex
from anomaly.annotations.config import default_db_path, is_read_only
from anomaly.annotations.store import (
    LABELS,
    REASONS,
    STATUSES,
    AnnotationError,
    Flag,
    InvalidFlagError,
    InvalidRegionError,
    NothingToUndoError,
    ReadOnlyError,
    StaleEditError,
    Store,
    series_label,
    validate_region,
)
from anomaly.errors import AnomalyError
from anomaly.render import draw_orientation

REGION_MODES = ("component at point", "box", "whole slice")
NO_REASON = "(none)"
POINT_TOLERANCE_PX = 4
_STORES: dict[tuple[str, bool], Store] = {}
_STORES_LOCK = threading.Lock()


def get_store() -> Store:
    """The store of the configured path and mode (one instance per path, shared by threads)."""
    key = (str(default_db_path()), is_read_only())
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = Store(key[0], read_only=key[1])
        return _STORES[key]


def _analysis(key):
    from anomaly.ui.callbacks import get_analysis

    return get_analysis(key)


# ----------------------------------------------------------------------------- access


def access_state(token=None) -> dict:
    """What the panel may do: {"read_only", "enabled", "user", "message"}."""
    ro = is_read_only()
    enabled = auth.annotation_enabled()
    user = None if ro else auth.verify_token(token)
    if ro:
        msg = ("**Read-only demo.** You can look at every part of the annotation workflow, but nothing is "
               "stored here. Run the app on your own server to annotate.")
    elif not enabled:
        msg = ("**Annotation is off (view-only): no annotator accounts are configured.** To enable it, add an "
               "account with `python -m anomaly.annotations add-user NAME` (stored in `$ANOMALY_USERS_FILE`, "
               "default `users.txt` in the app's data folder, `$ANOMALY_DATA_DIR`) or set `ANOMALY_USERS`, then log "
               "in here. Viewing needs no login.")  # no server path on the page
    elif user:
        msg = f"Logged in as **{user}**: your flags are stored in `{default_db_path().name}` with your name."
    else:
        msg = "Viewing needs no login. **Log in to annotate** (flag false positives, missed lesions, findings)."
    return {"read_only": ro, "enabled": enabled, "user": user, "message": msg}


def login(name: str, password: str) -> str:
    if is_read_only():
        raise ReadOnlyError("read-only demo mode: nothing is stored, so there is no login")
    return auth.login(name, password)


def require_user(token) -> str:
    """The annotator of a valid session token; ``ReadOnlyError`` / ``AuthError`` otherwise."""
    if is_read_only():
        raise ReadOnlyError("read-only demo mode: annotations are not stored")
    user = auth.verify_token(token)
    if not user:
        if not auth.annotation_enabled():
            raise auth.AuthError("annotation is not enabled on this server (no annotator accounts): "
                                 "add one with `python -m anomaly.annotations add-user NAME`")
        raise auth.AuthError("log in to annotate (your session is missing or expired); viewing needs no login")
    return user


# ----------------------------------------------------------------------------- case of a scan


def scan_series_label(a) -> str:
    s = a.scan
    ident = s.meta.get("SeriesInstanceUID") or s.content_hash or a.study_key
    return series_label(str(ident), s.description)


def ensure_case(store: Store, a, reviewer: str = "") -> None:
    s = a.scan
    store.ensure_case(a.study_key, series=scan_series_label(a), source=s.source, modality=s.modality,
                      plane=a.plane, shape=s.voxels.shape, spacing=s.spacing, reviewer=reviewer)


def _check_index(a, index) -> int:
    try:
        idx = int(index)
        if idx != float(index):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidRegionError(f"slice index {index!r} is not a whole number") from None
    if not 0 <= idx < a.n_slices:
        raise InvalidRegionError(f"slice index {idx} is out of range: this scan has {a.n_slices} slices "
                                 f"(0-{a.n_slices - 1}) in the {a.plane} plane")
    return idx


def _check_method(a, method) -> str:
    if not method:
        raise InvalidFlagError("choose the method the flag is about")
    if method not in a.results:
        raise InvalidFlagError(f"method {method!r} was not run on this scan (run: {', '.join(a.results)})")
    return method


def slice_shape(a, index: int) -> tuple[int, int]:
    return tuple(a.scan.slice(index, a.plane).shape)  # type: ignore[return-value]


def component_at(a, index: int, method: str, row, col, threshold: float = 1.0) -> np.ndarray:
    """The connected region of ``method``'s thresholded map (inside the brain) at (row, col) of slice
    ``index``; a click within ``POINT_TOLERANCE_PX`` of a region picks it."""
    h, w = slice_shape(a, index)
    try:
        r, c = int(round(float(row))), int(round(float(col)))
    except (TypeError, ValueError):
        raise InvalidRegionError("give the point (row, col) of the region to pick (click the slice preview)") from None
    if not (0 <= r < h and 0 <= c < w):
        raise InvalidRegionError(f"the point ({r}, {c}) is outside the {h}x{w} slice")
    if not bool(np.asarray(a.prepared.valid)[index]):
        raise InvalidRegionError(f"slice {index} has too little brain to be scored: no region to pick; use a box")
    m = (a.full_map(method)[index] >= float(threshold)) & np.asarray(a.prepared.original_masks[index], bool)
    lab, n = ndimage.label(m)
    k = lab[r, c]
    if k == 0 and n:
        dist, (ir, ic) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
        if dist[r, c] <= POINT_TOLERANCE_PX:
            k = lab[ir[r, c], ic[r, c]]
    if k == 0:
        raise InvalidRegionError(f"no region of {method} above threshold {float(threshold):g} at ({r}, {c}) on slice "
                                 f"{index}: click inside a coloured region, lower the threshold, or use a box")
    return lab == k


def region_for(a, index: int, method: str, mode: str, box=None, point=None, threshold: float = 1.0):
    """(box, mask) for a region mode: 'box' (row0, col0, row1, col1; half-open), 'component at point'
    or 'whole slice'. Validated: ``InvalidRegionError`` names the problem."""
    h, w = slice_shape(a, index)
    if mode == "whole slice":
        return validate_region((h, w), a.n_slices, index, [0, 0, h, w], None)
    if mode == "box":
        if box is None or any(v is None or v == "" for v in box):
            raise InvalidRegionError("give the box as row0, col0, row1, col1 (or click two corners on the preview)")
        return validate_region((h, w), a.n_slices, index, box, None)
    if mode == "component at point":
        _check_method(a, method)
        if point is None or any(v is None or v == "" for v in point):
            raise InvalidRegionError("give the point (row, col) of the region to pick (click the slice preview)")
        return validate_region((h, w), a.n_slices, index, None, component_at(a, index, method, *point, threshold))
    raise InvalidRegionError(f"region mode {mode!r} is not one of {', '.join(REGION_MODES)}")


# ----------------------------------------------------------------------------- flags


def _reason(reason):
    return None if reason in (None, "", NO_REASON) else reason


def add_flag(key, index, method: str, label: str, reason=None, note: str = "", mode: str = "component at point",
             box=None, point=None, threshold: float = 1.0, token=None) -> Flag:
    """Flags a region of slice ``index`` of the loaded scan; also keeps the (de-identified) slice pixels
    so that ``export-dataset`` works after the upload is gone."""
    user = require_user(token)
    a = _analysis(key)
    idx = _check_index(a, index)
    method = _check_method(a, method)
    if label not in LABELS:
        raise InvalidFlagError(f"label {label!r} is not one of {', '.join(LABELS)}")
    b, m = region_for(a, idx, method, mode, box, point, threshold)
    store = get_store()
    ensure_case(store, a, user)
    flag = store.add_flag(study_key=a.study_key, plane=a.plane, slice_index=idx, shape=m.shape, n_slices=a.n_slices,
                          method=method, label=label, reason=_reason(reason), note=note or "", mask=m,
                          checkpoint_hash=a.results[method].checkpoint_hash, threshold=float(threshold),
                          series=scan_series_label(a), reviewer=user, refuse_repeat_within_s=DOUBLE_SUBMIT_S)
    store.put_slice(a.study_key, a.plane, idx, a.scan.slice(idx, a.plane), a.scan.slice_spacing(a.plane), reviewer=user)
    return flag


DOUBLE_SUBMIT_S = 10.0  # the same flag again within this many seconds is a double click, not a new flag


def mark_slice_reviewed(key, index, token=None) -> bool:
    """Keeps slice ``index`` as reviewed (a negative example when nothing on it is flagged as a lesion)."""
    user = require_user(token)
    a = _analysis(key)
    idx = _check_index(a, index)
    store = get_store()
    ensure_case(store, a, user)
    if store.get_case(a.study_key).status == "not started":
        store.set_case_status(a.study_key, "in review", reviewer=user)
    return store.put_slice(a.study_key, a.plane, idx, a.scan.slice(idx, a.plane), a.scan.slice_spacing(a.plane),
                           reviewer=user)


def _seen_version(version, what: str) -> int:
    """The flag version the annotator sees, required for a change of a selected flag, so that a change
    made by someone since is refused (``StaleEditError``) instead of overwritten unseen."""
    if version in (None, ""):
        raise InvalidFlagError(f"give the version of the flag you see (the list's 'version' column) to {what} it: "
                               "a change made since is then refused, not overwritten unseen")
    try:
        v = float(str(version).strip())
    except ValueError:
        v = float("nan")
    if not v.is_integer() or v < 1:
        raise InvalidFlagError(f"the flag version must be a whole number from 1 (got {str(version)[:20]!r})")
    return int(v)


def edit_flag(flag_id: str, version, label=None, reason=None, note=None, token=None) -> Flag:
    """Changes label / reason / note of a flag at ``version`` (``StaleEditError`` if it changed since)."""
    user = require_user(token)
    if not flag_id:
        raise InvalidFlagError("select a flag first (click it in the list)")
    changes = {}
    if label not in (None, ""):
        changes["label"] = label
    if reason is not None:
        changes["reason"] = _reason(reason)
    if note is not None:
        changes["note"] = note
    store = get_store()
    expected = _seen_version(version, "edit")
    cur = store.get_flag(flag_id)
    if not cur.deleted and expected in (None, cur.version) and all(getattr(cur, k) == v for k, v in changes.items()):
        return cur  # nothing changed: no new version, no history row
    return store.update_flag(flag_id, expected, reviewer=user, **changes)


def remove_flag(flag_id: str, version=None, token=None) -> Flag:
    user = require_user(token)
    if not flag_id:
        raise InvalidFlagError("select a flag first (click it in the list)")
    return get_store().delete_flag(flag_id, _seen_version(version, "remove"), reviewer=user)


def undo(flag_id: str | None = None, study_key: str | None = None, token=None, version=None) -> Flag:
    """Undoes the latest action on ``flag_id`` (at ``version``, the one the annotator sees: a flag
    changed since is refused with ``StaleEditError``, as an edit is), else this annotator's latest
    action in ``study_key``, refused when someone changed that flag after it (undo never reverts
    another annotator's newer change unseen)."""
    user = require_user(token)
    store = get_store()
    expected = _seen_version(version, "undo the latest change of") if flag_id else None
    if not flag_id:
        if not study_key:
            raise NothingToUndoError("nothing to undo: select a flag or load a case")
        flag_id = store.last_undoable(study_key, user)
        if flag_id is None:
            raise NothingToUndoError("nothing of yours to undo in this case")
        latest = [h for h in store.history(flag_id) if h["action"] != "undo" and not h["undone"]]
        cur = store.get_flag(flag_id)
        if latest and latest[-1]["reviewer"] != user:
            raise StaleEditError(f"your last change here is on flag {flag_id[:8]}, which {latest[-1]['reviewer']} "
                                 f"changed after you (now version {cur.version}): nothing was undone; select the flag "
                                 "to see it", flag_id, None, cur)
        expected = cur.version
    return store.undo(flag_id, reviewer=user, expected_version=expected)


def flag_table(study_key: str | None, include_deleted: bool = False) -> list[dict]:
    """Rows for the flag list of a case (newest last)."""
    if not study_key:
        return []
    rows = []
    for f in get_store().list_flags(study_key, include_deleted=include_deleted):
        rows.append({"slice": f.slice_index, "of": f.n_slices, "plane": f.plane, "method": f.method, "label": f.label.replace("_", " "),
                     "reason": f.reason or "", "note": f.note, "region": _region_text(f), "by": f.updated_by,
                     "version": f.version, "updated (UTC)": f.updated_at[:19].replace("T", " "), "id": f.id})
    return rows


def _region_text(f: Flag) -> str:
    r0, c0, r1, c1 = f.box
    return f"rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1}, {f.area_px} px"


def get_flag(flag_id: str) -> Flag:
    return get_store().get_flag(flag_id)


# ----------------------------------------------------------------------------- cases / queue


def set_case_status(study_key: str, status: str, token=None, version=None) -> dict:
    """Sets a case's review status; with ``version`` (the case version the reviewer saw: the page sends it)
    a status set by someone since is refused (``StaleEditError``) instead of overwritten unseen."""
    user = require_user(token)
    if not study_key:
        raise InvalidFlagError("load a scan or pick a case from the queue first")
    seen = None if version in (None, "") else int(version)
    c = get_store().set_case_status(study_key, status, reviewer=user, expected_version=seen)
    return case_info(c.study_key)


def case_info(study_key: str | None) -> dict:
    if not study_key:
        return {"study_key": None, "status": None, "text": "No case: load a scan or pick one from the review queue."}
    store = get_store()
    c = store.get_case(study_key)
    if c is None:
        return {"study_key": study_key, "status": "not started", "version": 0,  # no case row seen: a row made since is newer
                "text": f"Case `{study_key}`: **not started** (no flag yet)."}
    # the last change: a status change (the case row) or a flag's add / edit / removal / undo
    by, at = c.reviewer, c.updated_at
    flag_change = store.last_flag_change(study_key)
    if flag_change is not None and flag_change[1] > (at or ""):
        by, at = flag_change
    return {"study_key": study_key, "status": c.status, "version": c.version,
            "text": (f"Case `{study_key}`: **{c.status}**; {c.n_flags} flag(s), {c.n_false_positives} false positive(s), "
                     f"{c.n_slices_stored} reviewed slice(s) kept; series {c.series or 'unknown'}; "
                     f"last change by {by or '-'} at {(at or '')[:19].replace('T', ' ')} UTC")}


def review_queue(method: str | None = None, status: str | None = None) -> list[dict]:
    method = None if method in (None, "", "(any)") else method
    status = None if status in (None, "", "(any)") else status
    return [{"study_key": c.study_key, "status": c.status, "flags": c.n_flags, "false positives": c.n_false_positives,
             "methods": ", ".join(c.methods), "reviewed slices": c.n_slices_stored, "series": c.series,
             "updated (UTC)": c.updated_at[:19].replace("T", " ")}
            for c in get_store().list_cases(status=status, method=method)]


def queue_methods(key=None) -> list[str]:
    """Methods to filter the queue by: those with flags in the store and those of the loaded scan."""
    names = {f.method for f in get_store().list_flags()}
    try:
        names |= set(_analysis(key).results)
    except AnomalyError:
        pass
    return sorted(names)


def queue_step(current: str | None, step: int, method: str | None = None, status: str | None = None) -> str | None:
    """The study key ``step`` places after (or before, step < 0) ``current`` in the filtered queue (wraps)."""
    keys = [r["study_key"] for r in review_queue(method, status)]
    if not keys:
        return None
    if current not in keys:
        return keys[0] if step >= 0 else keys[-1]
    return keys[(keys.index(current) + int(step)) % len(keys)]


# ----------------------------------------------------------------------------- summaries


def export_seg(key, out_dir=None) -> Path:
    """The loaded DICOM scan's confirmed findings as a DICOM SEG file (``anomaly.annotations.seg``)."""
    import tempfile

    from anomaly.annotations.seg import export_dicom_seg

    a = _analysis(key)
    paths = getattr(a, "source_paths", None)
    if a.scan.source != "dicom" or not paths:
        raise AnnotationError("DICOM SEG export needs a scan loaded from DICOM files (otherwise export a NIfTI label map: `python -m anomaly.annotations export-nifti STUDY_KEY --out FILE.nii.gz`)")
    if out_dir is None:  # the page's download: one folder per export, removed after SEG_KEEP_S
        root = Path(tempfile.gettempdir()) / "anomaly-seg"
        root.mkdir(parents=True, exist_ok=True)
        prune_old_exports(root)
        out_dir = tempfile.mkdtemp(dir=root)
    out = Path(out_dir) / f"{a.study_key}_seg.dcm"
    try:
        return export_dicom_seg(get_store(), a.study_key, paths, out, series_uid=a.scan.meta.get("SeriesInstanceUID"))
    except Exception:
        if not out.exists() and not any(Path(out_dir).iterdir()):
            Path(out_dir).rmdir()  # a refused export leaves no empty folder
        raise


SEG_KEEP_S = 3600  # a downloaded SEG (it carries the StudyInstanceUID) stays on the server an hour, as uploads do


def prune_old_exports(root: Path, keep_s: float = SEG_KEEP_S) -> int:
    """Removes the export folders under ``root`` older than ``keep_s`` seconds; returns how many."""
    import shutil
    import time

    n, now_s = 0, time.time()
    for d in Path(root).iterdir():
        try:
            if d.is_dir() and now_s - d.stat().st_mtime > keep_s:
                shutil.rmtree(d)
                n += 1
        except OSError:
            continue
    return n


def fp_summary(study_key: str | None = None) -> list[dict]:
    return ex.fp_summary(get_store(), study_key)


def fp_figure(rows: list[dict]):
    """Stacked bars: false positives per method, by reason (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
    methods = [r["method"] for r in rows]
    bottom = np.zeros(len(rows))
    for reason in REASONS:
        v = np.array([r[reason] for r in rows], float)
        if v.any():
            ax.bar(methods, v, bottom=bottom, label=reason)
            bottom += v
    if not rows or not bottom.any():
        ax.text(0.5, 0.5, "no false positive flagged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("false positives")
    ax.set_title("False positives per method, by reason", fontsize=10)
    if bottom.any():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


# ----------------------------------------------------------------------------- preview


def preview_scale(shape, aspect: float = 1.0) -> tuple[float, float]:
    """Up-scaling (rows, columns) of the preview: small slices comfortable to click (an integer
    factor on the finer axis), and the plane at its true proportions (``aspect`` = row / column
    pixel size, ``Analysis.pixel_aspect``: a coronal or sagittal plane of thick axial slices has
    rows several times taller than columns). Display pixel (y, x) shows slice pixel
    (y // rows factor, x // columns factor)."""
    h, w = max(int(shape[0]), 1), max(int(shape[1]), 1)
    a = float(aspect) if np.isfinite(aspect) and aspect > 0 else 1.0
    if a >= 1:
        kc = max(1, min(6, int(384 // max(h * a, w))))
        return kc * a, float(kc)
    kr = max(1, min(6, int(384 // max(h, w / a))))
    return float(kr), kr / a


def preview_pixel(y: float, x: float, shape, aspect: float = 1.0) -> tuple[int, int]:
    """The slice pixel (row, column) under display pixel (y, x) of the preview."""
    fr, fc = preview_scale(shape, aspect)
    return min(max(int(y / fr), 0), int(shape[0]) - 1), min(max(int(x / fc), 0), int(shape[1]) - 1)


_LABEL_RGB = {"false_positive": (255, 60, 60), "missed_lesion": (60, 220, 60), "confirmed_finding": (80, 160, 255)}


def preview(key, index, method: str | None = None, threshold: float = 1.0, mode: str | None = None, box=None,
            point=None) -> np.ndarray:
    """The slice (windowed) at input resolution x ``preview_scale`` (rows, columns): the method's thresholded region in
    yellow, existing flags in their label colour (red FP, green missed, blue confirmed) and the pending
    region in cyan."""
    a = _analysis(key)
    idx = _check_index(a, index)
    img = a.display_u8(idx)
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)

    def outline(m, colour):
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = colour

    if method in a.results:
        thr = (a.full_map(method)[idx] >= float(threshold)) & np.asarray(a.prepared.original_masks[idx], bool)
        outline(thr, (255, 220, 0))
    for f in get_store().list_flags(a.study_key, plane=a.plane, slice_index=idx):
        # the same study opened as another series or as one file of it: its flags are not on this image
        if f.mask.shape == img.shape and f.n_slices == a.n_slices:
            outline(f.mask, _LABEL_RGB[f.label])
    if mode:
        try:
            _, m = region_for(a, idx, method, mode, box, point, threshold)
            if mode != "whole slice":
                outline(m, (0, 255, 255))
        except (AnomalyError, TypeError, ValueError):
            pass
    def cross(p, colour):
        if p is None or len(p) < 2 or any(v in (None, "") for v in p[:2]):
            return
        try:
            r, c = int(round(float(p[0]))), int(round(float(p[1])))
        except (TypeError, ValueError):
            return
        if 0 <= r < img.shape[0] and 0 <= c < img.shape[1]:
            rgb[max(r - 2, 0):r + 3, c] = colour
            rgb[r, max(c - 2, 0):c + 3] = colour

    cross(point, (255, 0, 255))
    if mode == "box" and box is not None and len(box) == 4 and all(v in (None, "") for v in box[2:]):
        cross(box[:2], (0, 255, 255))  # the first corner of a box being drawn
    h, w = img.shape
    fr, fc = preview_scale(img.shape, a.pixel_aspect())
    rows = np.minimum((np.arange(max(1, round(h * fr))) / fr).astype(int), h - 1)
    cols = np.minimum((np.arange(max(1, round(w * fc))) / fc).astype(int), w - 1)
    out = rgb[rows][:, cols]
    if a.scan.known_frame and min(out.shape[:2]) >= 64:  # orientation letters, as on the viewer's panels
        out = np.asarray(draw_orientation(Image.fromarray(out), a.plane, top=3))
    return out


__all__ = ["REGION_MODES", "add_flag", "edit_flag", "remove_flag", "undo", "flag_table", "mark_slice_reviewed",
           "set_case_status", "case_info", "review_queue", "queue_step", "fp_summary", "fp_figure", "preview",
           "preview_scale", "preview_pixel", "login", "require_user", "access_state", "region_for", "component_at", "get_store",
           "AnnotationError", "STATUSES"]
