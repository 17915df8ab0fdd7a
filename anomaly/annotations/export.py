"""Exports of the annotation store: CSV, JSON (and import back), NIfTI masks, a data set, FP rates.

Every exported row carries its provenance (method, checkpoint hash, project version, threshold,
series label) and names the study only by its salted study key: the store holds no patient name
or ID, so no export can contain one.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

import anomaly
from anomaly.annotations.store import (
    LABELS,
    REASONS,
    SCHEMA_VERSION,
    AnnotationError,
    Flag,
    Store,
    decode_mask,
    now,
)
from anomaly.scan import display_to_ras

EXPORT_FORMAT = "anomaly-annotations"
# NIfTI label values: lesions paint over false positives where regions overlap
LABEL_CODES = {"false_positive": 3, "missed_lesion": 2, "confirmed_finding": 1}
LESION_LABELS = ("confirmed_finding", "missed_lesion")
CSV_COLUMNS = ["id", "study_key", "series", "plane", "slice_index", "method", "checkpoint_hash", "threshold",
               "project_version", "exported_with", "label", "reason", "note", "box", "area_px", "reviewer",
               "updated_by", "created_at", "updated_at", "version", "deleted"]


def flag_row(f: Flag) -> dict:
    """One flag as a flat CSV row with its provenance."""
    return {
        "id": f.id, "study_key": f.study_key, "series": f.series, "plane": f.plane, "slice_index": f.slice_index,
        "method": f.method, "checkpoint_hash": f.checkpoint_hash,
        "threshold": "" if f.threshold is None else f.threshold, "project_version": f.project_version,
        "exported_with": anomaly.__version__, "label": f.label, "reason": f.reason or "", "note": f.note,
        "box": json.dumps(f.box), "area_px": f.area_px, "reviewer": f.reviewer, "updated_by": f.updated_by,
        "created_at": f.created_at, "updated_at": f.updated_at, "version": f.version, "deleted": int(f.deleted),
    }


def _writable(store: Store, path) -> Path:
    """An export's path, refused when it is the database itself (or its WAL/shared-memory files)."""
    path = Path(path)
    if store.is_own_file(path):
        raise AnnotationError(f"{path} is the annotation database itself: an export there would destroy it; "
                              "give another file")
    return path


def _replace_atomically(path: Path, write) -> Path:
    """``write(tmp)`` then rename over ``path``: a failed export (a full disk) leaves an earlier file whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise AnnotationError(f"cannot write {path}: {e.strerror or e}; an earlier {path.name} is kept") from None
    return path


def export_csv(store: Store, path, study_key: str | None = None, include_deleted: bool = False) -> Path:
    path = _writable(store, path)
    flags = store.list_flags(study_key, include_deleted=include_deleted)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for fl in flags:
                w.writerow(flag_row(fl))

    return _replace_atomically(path, write)


def export_json_dict(store: Store, study_key: str | None = None, include_deleted: bool = True) -> dict:
    flags = store.list_flags(study_key, include_deleted=include_deleted)
    rows = []
    for fl in flags:
        d = fl.to_dict(include_mask=True)
        d["exported_with"] = anomaly.__version__
        rows.append(d)
    cases = []
    for c in store.list_cases(study_key=study_key):
        cases.append({"study_key": c.study_key, "status": c.status, "series": c.series, "source": c.source,
                      "modality": c.modality, "plane": c.plane, "shape": c.shape, "spacing": c.spacing,
                      "reviewer": c.reviewer, "updated_at": c.updated_at})
    return {"format": EXPORT_FORMAT, "schema_version": SCHEMA_VERSION, "project_version": anomaly.__version__,
            "exported_at": now(), "flags": rows, "cases": cases}


def export_json(store: Store, path, study_key: str | None = None, include_deleted: bool = True) -> Path:
    """All flags (with their masks as base64 PNG, and removed ones so that an import mirrors the store)."""
    path = _writable(store, path)
    text = json.dumps(export_json_dict(store, study_key, include_deleted), indent=1) + "\n"
    return _replace_atomically(path, lambda tmp: tmp.write_text(text))


def import_json(store: Store, path, reviewer: str = "import") -> dict:
    """Imports flags exported by ``export_json``; a flag whose id is already stored is skipped.
    Returns counts {"imported", "skipped"}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise AnnotationError(f"cannot read {path} as an annotation export: {e}") from e
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or not isinstance(data.get("flags"), list):
        raise AnnotationError(f"{path} is not an annotation export (format {EXPORT_FORMAT!r} with a 'flags' list)")
    flags = []
    for i, d in enumerate(data["flags"]):
        try:
            flags.append(Flag.from_dict(d))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnnotationError(f"{path}: flag #{i} is malformed ({type(e).__name__}: {e}); nothing was imported") from None
    cases = data.get("cases", [])
    try:
        for c in cases:  # checked before anything is written
            assert isinstance(c, dict) and isinstance(c["study_key"], str) and c["study_key"]
            [int(v) for v in (c.get("shape") or ())]
            [float(v) for v in (c.get("spacing") or ())]
            assert all(isinstance(c.get(k, ""), str) for k in ("series", "source", "modality", "plane"))
    except (AssertionError, KeyError, TypeError, ValueError):
        raise AnnotationError(f"{path}: its 'cases' are malformed (a study_key, whole-number shape, numeric spacing, "
                              "text fields); nothing was imported") from None
    known = {c["study_key"] for c in cases if store.get_case(c["study_key"]) is not None}
    try:
        counts = store.import_flags(flags, reviewer=reviewer)  # all or none
    except AnnotationError as e:
        raise AnnotationError(f"{path}: {e}; nothing was imported") from None
    for c in cases:
        old = store.get_case(c["study_key"])
        if old is None or not old.shape:
            store.ensure_case(c["study_key"], series=c.get("series", ""), source=c.get("source", ""),
                              modality=c.get("modality", ""), plane=c.get("plane", "axial"),
                              shape=c.get("shape") or (), spacing=c.get("spacing") or (), reviewer=reviewer)
        # a case new to this store takes its exported review status; a status set here is not overwritten
        if c["study_key"] not in known and c.get("status") in ("done", "in review"):
            cur = store.get_case(c["study_key"])
            if cur is not None and cur.status != c["status"]:
                store.set_case_status(c["study_key"], c["status"], reviewer=reviewer)
    return counts


# ----------------------------------------------------------------------------- NIfTI


def _put_plane(vol: np.ndarray, f: Flag, value) -> None:
    m = f.mask
    if f.plane == "axial":
        vol[f.slice_index][m] = value
    elif f.plane == "coronal":  # Scan.slice: v[::-1, i, :]
        vol[:, f.slice_index, :][m[::-1]] = value
    else:  # sagittal: v[::-1, :, i]
        vol[:, :, f.slice_index][m[::-1]] = value


def volume_mask(store: Store, study_key: str, labels=LABELS, binary: bool = False) -> tuple[np.ndarray, tuple]:
    """The flagged regions of a study as an (S, H, W) array in display order and its spacing (ds, dh, dw).
    Values ``LABEL_CODES`` (or 1 with ``binary``)."""
    case = store.get_case(study_key)
    flags = [f for f in store.list_flags(study_key) if f.label in labels]
    if case is not None and len(case.shape) == 3:
        shape, spacing = tuple(case.shape), tuple(case.spacing) if len(case.spacing) == 3 else (1.0, 1.0, 1.0)
    else:
        axial = [f for f in store.list_flags(study_key) if f.plane == "axial"]
        if not axial:
            raise AnnotationError(f"the geometry of study {study_key} is unknown (no case record): cannot build a volume")
        shape, spacing = (axial[0].n_slices, axial[0].height, axial[0].width), (1.0, 1.0, 1.0)
    vol = np.zeros(shape, np.uint8)
    order = sorted(flags, key=lambda f: -LABEL_CODES[f.label])  # false positives first, lesions on top
    for f in order:
        expect = {"axial": (shape[0], shape[1], shape[2]), "coronal": (shape[1], shape[0], shape[2]),
                  "sagittal": (shape[2], shape[0], shape[1])}[f.plane]
        if (f.n_slices, f.height, f.width) != expect:
            raise AnnotationError(f"flag {f.id[:8]} ({f.plane}, {f.n_slices} slices of {f.height}x{f.width}) does not "
                                  f"fit the study volume {shape}")
        _put_plane(vol, f, 1 if binary else LABEL_CODES[f.label])
    return vol, spacing


def export_nifti(store: Store, study_key: str, path, labels=LABELS, binary: bool = False) -> Path:
    """A study's flagged regions as a NIfTI label map in the volume's geometry, oriented exactly as
    ``anomaly.data.folder.write_mask`` writes masks ((S, H, W) display order -> RAS+ via
    ``display_to_ras``, affine diag(dw, dh, ds)). Values: 1 confirmed finding, 2 missed lesion,
    3 false positive (1 for every region with ``binary``)."""
    import nibabel as nib

    vol, (ds, dh, dw) = volume_mask(store, study_key, labels, binary)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(display_to_ras(vol), np.diag([dw, dh, ds, 1.0]))
    img.header["descrip"] = (f"anomaly {anomaly.__version__} flags " + ("binary" if binary else "1=conf 2=miss 3=FP"))[:79].encode()
    nib.save(img, str(path))
    return path


# ----------------------------------------------------------------------------- data set


def _slice_name(study_key: str, plane: str, index: int) -> str:
    return f"{study_key}_{plane}_{int(index):04d}"


def export_dataset(store: Store, out_dir, only_done: bool = False) -> dict:
    """The reviewed slices as a data set in the project's format (``anomaly.data.folder``):
    images/ (the stored de-identified 16-bit slices), masks/ (confirmed findings + missed lesions),
    labels.csv (file,label,method,checkpoint_hash,... with provenance), plus fp_rates.csv and
    export_info.json. ``python -m anomaly.evaluate --data OUT`` runs on it."""
    from anomaly.data.folder import write_labels, write_mask

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cases = {c.study_key: c for c in store.list_cases()}
    rows = []
    n_lesion = 0
    used_flags: set[str] = set()
    for s in store.list_slices():
        case = cases.get(s["study_key"])
        if only_done and (case is None or case.status != "done"):
            continue
        flags = store.list_flags(s["study_key"], plane=s["plane"], slice_index=s["slice_index"])
        name = _slice_name(s["study_key"], s["plane"], s["slice_index"])
        (out / "images" / f"{name}.png").write_bytes(s["image_png"])
        mask = np.zeros((s["height"], s["width"]), bool)
        for f in flags:
            used_flags.add(f.id)
            if f.label in LESION_LABELS:
                if f.mask.shape != mask.shape:
                    raise AnnotationError(f"flag {f.id[:8]} does not match the stored slice {name}")
                mask |= f.mask
        write_mask(out, name, mask)
        lesion = bool(mask.any())
        n_lesion += lesion
        fps = [f for f in flags if f.label == "false_positive"]
        area_mm2 = float(mask.sum()) * s["row_spacing"] * s["col_spacing"]
        rows.append({
            "file": f"{name}.png", "label": int(lesion),
            "method": ";".join(sorted({f.method for f in flags})),
            "checkpoint_hash": ";".join(sorted({f.checkpoint_hash for f in flags if f.checkpoint_hash})),
            "threshold": ";".join(sorted({f"{f.threshold:g}" for f in flags if f.threshold is not None})),
            "project_version": ";".join(sorted({f.project_version for f in flags})) or anomaly.__version__,
            "exported_with": anomaly.__version__,
            "study_key": s["study_key"], "series": case.series if case else "", "plane": s["plane"],
            "slice": s["slice_index"], "case_status": case.status if case else "",
            "n_false_positives": len(fps), "fp_reasons": ";".join(sorted({f.reason or "" for f in fps})),
            "n_confirmed": sum(f.label == "confirmed_finding" for f in flags),
            "n_missed": sum(f.label == "missed_lesion" for f in flags),
            "size_mm": round(2 * math.sqrt(area_mm2 / math.pi), 1) if lesion else "",
            "reviewers": ";".join(sorted({f.reviewer for f in flags} | {s["reviewer"]})),
        })
    if not rows:
        raise AnnotationError("no reviewed slice in the store" + (" of a case marked done" if only_done else "")
                              + ": flag a region or mark a slice reviewed first")
    write_labels(out, rows)
    fp_path = export_fp_rates(store, out / "fp_rates.csv", only_done=only_done)
    missing = [f.id for f in store.list_flags() if f.id not in used_flags
               and (not only_done or (cases.get(f.study_key) and cases[f.study_key].status == "done"))]
    info = {"format": "anomaly data set from reviewed annotations", "project_version": anomaly.__version__,
            "schema_version": SCHEMA_VERSION, "exported_at": now(), "n_images": len(rows), "n_with_lesion": n_lesion,
            "n_cases": len({r["study_key"] for r in rows}), "flags_without_stored_slice": len(missing),
            "only_done": only_done, "fp_rates": fp_path.name}
    (out / "export_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def fp_rates(store: Store, only_done: bool = False) -> list[dict]:
    """Per reviewed scan and method: false positives, confirmed findings, missed lesions, reviewed
    slices, false positives per reviewed slice and the false share of flagged detections."""
    slices = Counter(s["study_key"] for s in store.list_slices(with_pixels=False))
    by = defaultdict(list)
    for f in store.list_flags():
        by[(f.study_key, f.method)].append(f)
    cases = {c.study_key: c for c in store.list_cases()}
    out = []
    for (sk, method), flags in sorted(by.items()):
        case = cases.get(sk)
        if only_done and (case is None or case.status != "done"):
            continue
        fp = [f for f in flags if f.label == "false_positive"]
        conf = sum(f.label == "confirmed_finding" for f in flags)
        n_sl = slices.get(sk, 0)
        row = {
            "study_key": sk, "series": case.series if case else "", "case_status": case.status if case else "",
            "method": method, "checkpoint_hash": ";".join(sorted({f.checkpoint_hash for f in flags if f.checkpoint_hash})),
            "project_version": anomaly.__version__, "reviewed_slices": n_sl, "false_positives": len(fp),
            "confirmed_findings": conf, "missed_lesions": sum(f.label == "missed_lesion" for f in flags),
            "fp_per_reviewed_slice": round(len(fp) / n_sl, 4) if n_sl else "",
            "false_share_of_detections": round(len(fp) / (len(fp) + conf), 4) if (fp or conf) else "",
        }
        for r in REASONS:
            row[f"fp_{r.replace(' ', '_')}"] = sum(f.reason == r for f in fp)
        out.append(row)
    return out


def export_fp_rates(store: Store, path, only_done: bool = False) -> Path:
    rows = fp_rates(store, only_done)
    cols = ["study_key", "series", "case_status", "method", "checkpoint_hash", "project_version", "reviewed_slices",
            "false_positives", "confirmed_findings", "missed_lesions", "fp_per_reviewed_slice",
            "false_share_of_detections"] + [f"fp_{r.replace(' ', '_')}" for r in REASONS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def fp_summary(store: Store, study_key: str | None = None) -> list[dict]:
    """Per method: false positives by reason, their total, confirmed findings and missed lesions."""
    rows: dict[str, dict] = {}
    for f in store.list_flags(study_key):
        r = rows.setdefault(f.method, {"method": f.method, **{x: 0 for x in REASONS}, "false positives": 0,
                                       "confirmed findings": 0, "missed lesions": 0})
        if f.label == "false_positive":
            r[f.reason or "other"] += 1
            r["false positives"] += 1
        elif f.label == "confirmed_finding":
            r["confirmed findings"] += 1
        else:
            r["missed lesions"] += 1
    return [rows[k] for k in sorted(rows)]


# ----------------------------------------------------------------------------- DICOM SEG


def export_dicom_seg(store: Store, study_key: str, dicom_files, path, labels=("confirmed_finding",),
                     series_uid: str | None = None) -> Path:
    """A study's confirmed findings as DICOM SEG on its source series: see ``anomaly.annotations.seg``."""
    from anomaly.annotations.seg import export_dicom_seg as _export

    return _export(store, study_key, dicom_files, path, labels, series_uid)


__all__ = ["export_csv", "export_json", "export_json_dict", "import_json", "export_nifti", "volume_mask",
           "export_dataset", "export_dicom_seg", "fp_rates", "export_fp_rates", "fp_summary", "flag_row", "LABEL_CODES", "decode_mask"]
