"""A study's confirmed findings as a DICOM Segmentation (highdicom) that references its source series.

The SEG is built from the flags in the store and the study's own DICOM files (the app passes
the uploaded files; the CLI takes ``--dicom DIR``). The files are loaded with the project's
loader, so the flags' (S, H, W) display-order masks map back to the stored frames exactly as
the loader mapped them forward (``scan.meta["display_transform"]`` and the SOP Instance UIDs
in display order).

Segments: one per (label, method, checkpoint hash), each with its provenance in the segment's
algorithm identification (method name, checkpoint hash as version, threshold and project
version as parameters) and the source series in the SEG's references.

Privacy: the SEG keeps the source's Study/Series/SOP Instance UIDs (a SEG must reference its
images) but not the patient: Patient's Name and Patient ID are replaced by the hashed study key,
and birth date, other IDs and the annotators' names are not written.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

import anomaly
from anomaly.annotations.store import AnnotationError, Store
from anomaly.keys import study_key as make_study_key

SEG_LABELS = ("confirmed_finding",)
_TITLES = {"confirmed_finding": "confirmed finding", "missed_lesion": "missed lesion",
           "false_positive": "false positive"}
# removed wherever they occur, nested sequences included (highdicom copies e.g. the source's
# equipment, with its institution and station, into ContributingEquipmentSequence)
_PATIENT_KEYWORDS_REMOVED = ("PatientBirthDate", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
                             "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
                             "ReferringPhysicianName", "AccessionNumber", "InstitutionName", "InstitutionAddress",
                             "InstitutionalDepartmentName", "StationName", "OperatorsName", "PerformingPhysicianName",
                             "PhysiciansOfRecord", "RequestingPhysician", "PatientAge", "PatientBirthTime",
                             "PatientWeight", "PatientSize")
_BLANKED = ("StudyID",)  # type 2 (must be present): emptied instead


def _strip_identifiers(ds) -> None:
    """Delete ``_PATIENT_KEYWORDS_REMOVED`` from ``ds`` and from every dataset nested in it."""
    for kw in _PATIENT_KEYWORDS_REMOVED:
        if kw in ds:
            delattr(ds, kw)
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _strip_identifiers(item)


def _blank_identifiers(ds) -> None:
    """Empty ``_PATIENT_KEYWORDS_REMOVED`` in a source dataset (highdicom reads some of them, type 2,
    so they stay present); the SEG drops them afterwards (``_strip_identifiers``)."""
    for kw in _PATIENT_KEYWORDS_REMOVED:
        if kw in ds:
            ds[kw].value = [] if ds[kw].VR == "SQ" else ""


def display_to_stored(mask: np.ndarray, transform: dict) -> np.ndarray:
    """One (H, W) display-order slice -> the stored frame's (rows, cols): the inverse of the
    DICOM loader's transpose / row flip / column flip (``anomaly.io.dicom._to_display``)."""
    m = np.asarray(mask)
    if transform.get("flip_cols"):
        m = m[:, ::-1]
    if transform.get("flip_rows"):
        m = m[::-1, :]
    if transform.get("transposed"):
        m = m.T
    return np.ascontiguousarray(m)


def _segments(store: Store, key: str, labels) -> dict[tuple, list]:
    groups: dict[tuple, list] = defaultdict(list)
    for f in store.list_flags(key):
        if f.label in labels:
            if f.plane != "axial":
                raise AnnotationError(f"flag {f.id[:8]} was drawn on the {f.plane} plane: the DICOM SEG export "
                                      "takes flags on the acquired (axial) slices; for the others export a NIfTI label map: `python -m anomaly.annotations export-nifti`")
            groups[(f.label, f.method, f.checkpoint_hash)].append(f)
    return dict(sorted(groups.items()))


def export_dicom_seg(store: Store, study_key: str, dicom_files, path, labels=SEG_LABELS,
                     series_uid: str | None = None) -> Path:
    """Write ``path`` (a DICOM SEG) for ``study_key``'s flags with ``labels`` on its source series
    (``series_uid``, a UID or series key, chooses it when the files hold several)."""
    files = [Path(p) for p in dicom_files]
    if not files:
        raise AnnotationError("no DICOM files given: the SEG must reference the study's source series")
    log = logging.getLogger("pydicom")
    level = log.level
    with contextlib.ExitStack() as stack, warnings.catch_warnings():  # the stack: folders of extracted zips
        # pydicom's warnings about a source's malformed values quote the values (a date, a name): not logged
        warnings.simplefilter("ignore")
        log.setLevel(logging.ERROR)
        try:
            return _export(store, study_key, files, stack, path, labels, series_uid)
        finally:
            log.setLevel(level)


def _export(store: Store, study_key: str, files: list[Path], stack: contextlib.ExitStack, path, labels,
            series_uid) -> Path:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from anomaly.errors import AnomalyError, MultipleSeriesError
    from anomaly.io import load_scan
    from anomaly.io.loader import gather
    from anomaly.keys import series_key
    try:
        scan = load_scan(files, series_uid=series_uid)
    except MultipleSeriesError as e:
        listed = "; ".join(f"{k} ({v})" for k, v in e.series.items())
        raise AnnotationError(f"the DICOM files hold {len(e.series)} series: choose the one the flags were drawn on "
                              f"(--series KEY): {listed}") from None
    except AnomalyError as e:
        raise AnnotationError(f"cannot read the source series: {e}") from e
    if scan.study_uid is None or make_study_key(scan.study_uid) != study_key:
        raise AnnotationError("these DICOM files are not the study of this study key (different StudyInstanceUID)")
    uids = scan.meta.get("SOPInstanceUIDs") or []
    if len(uids) != scan.n_slices or "frames" in scan.meta:
        raise AnnotationError("DICOM SEG export needs a series of single-frame images (multi-frame: export a NIfTI label map with `python -m anomaly.annotations export-nifti`)")
    transform = scan.meta.get("display_transform") or {}
    groups = _segments(store, study_key, labels)
    if not groups:
        raise AnnotationError(f"study {study_key} has no flags labelled {', '.join(labels)} to export")
    # flags drawn on another series or subset of the study (e.g. one file of it, opened alone) do
    # not belong to this series' frames: left out, not a reason to refuse the others
    this_series = series_key(scan.meta.get("SeriesInstanceUID"))
    other = lambda f: (f.series or "").startswith("se-") and f.series.split()[0] != this_series  # noqa: E731
    groups = {k: [f for f in fl if f.n_slices == scan.n_slices and not other(f)] for k, fl in groups.items()}
    groups = {k: fl for k, fl in groups.items() if fl}
    if not groups:
        raise AnnotationError(f"none of the study's flags labelled {', '.join(labels)} was drawn on this series "
                              f"({scan.n_slices} slices): they belong to another series or file of the study")

    if scan.source != "dicom":
        raise AnnotationError("the source files are not a DICOM series")
    by_uid = {}
    try:  # the files the loader read: folders walked, zips extracted (its own safe extractor and limits)
        files = [e.path for e in gather(files, stack).entries]
    except AnomalyError as e:
        raise AnnotationError(f"cannot read the source series: {e}") from e
    for p in files:
        try:
            ds = pydicom.dcmread(str(p))
        except Exception:  # noqa: BLE001 - not DICOM (a README, DICOMDIR entries...): skipped
            continue
        by_uid[str(getattr(ds, "SOPInstanceUID", ""))] = ds
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise AnnotationError(f"{len(missing)} image(s) of the series are not among the files given")
    sources = [by_uid[u] for u in uids]
    for ds in sources:  # what the SEG does not keep reaches highdicom (and its checks of the values) empty
        _blank_identifiers(ds)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    pixels = np.zeros((len(sources), rows, cols, len(groups)), bool)
    descriptions = []
    for j, ((label, method, ckpt), flags) in enumerate(groups.items(), start=1):
        for f in flags:
            if f.n_slices != scan.n_slices or not 0 <= f.slice_index < scan.n_slices:
                raise AnnotationError(f"flag {f.id[:8]} does not fit the source series ({scan.n_slices} slices)")
            stored = display_to_stored(f.mask, transform)
            if stored.shape != (rows, cols):
                raise AnnotationError(f"flag {f.id[:8]} is {f.height}x{f.width}: the series' images are {rows}x{cols}")
            pixels[f.slice_index, :, :, j - 1] |= stored
        thresholds = sorted({f.threshold for f in flags if f.threshold is not None})
        algo = hd.AlgorithmIdentificationSequence(
            name=method or "manual", version=ckpt or "none", family=codes.cid7162.ArtificialIntelligence,
            parameters={"threshold": ";".join(f"{t:g}" for t in thresholds) or "none",
                        "project_version": anomaly.__version__, "label": label,
                        "source_series": str(sources[0].SeriesInstanceUID)})
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=j, segment_label=f"{_TITLES.get(label, label)} ({method})"[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=f"{study_key}-{label}-{method}"[:64]))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="anomaly review station",
            manufacturer_model_name="anomaly", software_versions=anomaly.__version__, device_serial_number="none",
            series_description="anomaly review: " + ", ".join(_TITLES.get(x, x) for x in labels))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        # highdicom's messages quote the offending header value (a date, a name): not passed on
        raise AnnotationError("the source series has a header value a DICOM SEG cannot carry (e.g. a study date or "
                              f"time not in DICOM format; {type(e).__name__}): no SEG written; export a NIfTI label "
                              "map instead: `python -m anomaly.annotations export-nifti`") from None
    _strip_identifiers(seg)
    for kw in _BLANKED:
        if kw in seg:
            setattr(seg, kw, "")
    seg.PatientName = study_key
    seg.PatientID = study_key
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path
