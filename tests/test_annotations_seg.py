"""DICOM SEG export of confirmed findings on the real 20-file DICOM brain series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from anomaly.annotations.export import export_dicom_seg
from anomaly.annotations.seg import display_to_stored
from anomaly.annotations.store import AnnotationError, Store
from anomaly.io import load_scan
from anomaly.keys import study_key

SERIES = Path(__file__).resolve().parents[1] / "assets" / "dicom" / "brain_pd_series"


@pytest.fixture(scope="module")
def series():
    files = sorted(SERIES.glob("*.dcm"))
    scan = load_scan(files)
    return files, scan, study_key(scan.study_uid)


def _box_mask(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_display_to_stored_inverts_the_loader_transform():
    a = np.arange(12).reshape(3, 4)
    for t in ({}, {"flip_rows": True}, {"flip_cols": True}, {"transposed": True},
              {"transposed": True, "flip_rows": True, "flip_cols": True}):
        fwd = a.T if t.get("transposed") else a  # the loader's order: transpose, flip rows, flip cols
        fwd = fwd[::-1] if t.get("flip_rows") else fwd
        fwd = fwd[:, ::-1] if t.get("flip_cols") else fwd
        assert np.array_equal(display_to_stored(fwd, t), a)


def test_seg_references_the_source_and_puts_the_region_on_the_right_frame(tmp_path, series):
    files, scan, key = series
    s, h, w = scan.shape
    store = Store(tmp_path / "a.sqlite")
    z = s // 2
    m = _box_mask(h, w, h // 3, h // 3 + 12, w // 4, w // 4 + 20)  # off-centre, asymmetric: catches flips
    store.add_flag(study_key=key, plane="axial", slice_index=z, shape=(h, w), n_slices=s, method="dae",
                   label="confirmed_finding", reviewer="alice", mask=m, checkpoint_hash="0123456789abcdef",
                   threshold=1.0, series="brain")
    store.add_flag(study_key=key, plane="axial", slice_index=z + 1, shape=(h, w), n_slices=s, method="ae",
                   label="false_positive", reason="noise", reviewer="bob", mask=_box_mask(h, w, 5, 9, 5, 9))
    out = export_dicom_seg(store, key, files, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(str(out))
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert str(seg.PatientName) == key and seg.PatientID == key  # no patient identity from the source
    src = {str(pydicom.dcmread(str(f)).SOPInstanceUID): f for f in files}
    assert seg.StudyInstanceUID == scan.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(str(files[0])).SeriesInstanceUID
    # one segment (the false positive is not exported), with provenance
    assert len(seg.SegmentSequence) == 1
    algo = seg.SegmentSequence[0].SegmentAlgorithmName
    assert algo == "dae"
    assert "confirmed finding" in seg.SegmentSequence[0].SegmentLabel
    # the one frame references the source image of display slice z, and its pixels are the box
    assert int(seg.NumberOfFrames) == 1
    fg = seg.PerFrameFunctionalGroupsSequence[0]
    ref_uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    assert ref_uid == scan.meta["SOPInstanceUIDs"][z]
    frame = seg.pixel_array.astype(bool)
    expect = display_to_stored(m, scan.meta["display_transform"])
    assert frame.shape == expect.shape and np.array_equal(frame, expect)
    # re-loading the source image of that frame: the region lies inside its pixel grid
    ds = pydicom.dcmread(str(src[ref_uid]))
    assert (int(ds.Rows), int(ds.Columns)) == frame.shape


def test_seg_refuses_other_study_and_empty(tmp_path, series):
    files, scan, key = series
    store = Store(tmp_path / "b.sqlite")
    with pytest.raises(AnnotationError, match="no flags"):
        export_dicom_seg(store, key, files, tmp_path / "x.dcm")
    with pytest.raises(AnnotationError, match="not the study"):
        export_dicom_seg(store, "sk-00000000000000000000", files, tmp_path / "x.dcm")
    with pytest.raises(AnnotationError, match="no DICOM files"):
        export_dicom_seg(store, key, [], tmp_path / "x.dcm")


def test_cli_export_seg(tmp_path, series):
    from anomaly.annotations.__main__ import main

    files, scan, key = series
    s, h, w = scan.shape
    db = tmp_path / "c.sqlite"
    Store(db).add_flag(study_key=key, plane="axial", slice_index=3, shape=(h, w), n_slices=s, method="zscore",
                       label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 10, 20, 10, 30))
    out = tmp_path / "cli.dcm"
    assert main(["export-seg", key, "--db", str(db), "--dicom", str(SERIES), "--out", str(out)]) == 0
    assert pydicom.dcmread(str(out)).Modality == "SEG"


def test_app_callback_exports_seg_of_the_loaded_dicom_scan(tmp_path, monkeypatch, series):
    """The UI path: load the DICOM series through the app's callback, flag, export (no Gradio UI needed)."""
    from anomaly.annotations import service as svc
    from anomaly.ui import callbacks as cb
    from anomaly.ui.annotate import on_export_seg

    monkeypatch.setenv("ANOMALY_ANNOTATIONS_DB", str(tmp_path / "ui.sqlite"))
    monkeypatch.setattr(svc, "_STORES", {})
    files, scan, key = series
    k, a = cb.load_and_analyse([str(f) for f in files], methods=["zscore"])
    s, h, w = a.scan.shape
    svc.get_store().add_flag(study_key=a.study_key, plane="axial", slice_index=2, shape=(h, w), n_slices=s,
                             method="zscore", label="confirmed_finding", reviewer="alice",
                             mask=_box_mask(h, w, 10, 20, 10, 30))
    out = on_export_seg(k)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and str(ds.PatientName) == a.study_key
    # the download's folder is removed an hour later, at a later export
    import os
    import time

    folder = Path(out).parent
    assert folder.parent.name == "anomaly-seg"
    old = time.time() - svc.SEG_KEEP_S - 60
    os.utime(folder, (old, old))
    on_export_seg(k)
    assert not folder.exists()
    # the same series chosen from a zip of two series: the export takes the series the scan was loaded from
    from anomaly.keys import series_key
    from tests.test_io_dicom import _two_series_zip

    zpath, first_uid, _ = _two_series_zip(tmp_path / "two")
    k2, a2 = cb.load_and_analyse([str(zpath)], methods=["zscore"], series_uid=series_key(first_uid))
    assert a2.study_key == a.study_key and a2.n_slices == s
    assert pydicom.dcmread(on_export_seg(k2)).Modality == "SEG"


def test_seg_carries_no_institution_or_identifier_anywhere(tmp_path, series):
    """Identifiers of the source go nowhere in the SEG, nested sequences included (highdicom copies
    the source's equipment into ContributingEquipmentSequence)."""
    files, scan, key = series
    named = tmp_path / "named"
    named.mkdir()
    secrets = {"PatientName": "Doe^Jane", "PatientID": "MRN-123456", "InstitutionName": "St Secret Hospital",
               "StationName": "MRS1", "AccessionNumber": "ACC987", "PatientBirthDate": "19700101",
               "ReferringPhysicianName": "Dr^Who", "OperatorsName": "Op^Erator", "StudyID": "STUDY-42",
               "InstitutionalDepartmentName": "Neuro Secret Dept"}
    for f in files:
        ds = pydicom.dcmread(str(f))
        for kw, v in secrets.items():
            setattr(ds, kw, v)
        for tag in [t for t in ds.keys() if t.group == 0]:  # command-set leftovers pydicom will not write
            del ds[tag]
        ds.save_as(str(named / f.name))
    nfiles = sorted(named.glob("*.dcm"))
    nscan = load_scan(nfiles)
    nkey = study_key(nscan.study_uid)
    s, h, w = nscan.shape
    store = Store(tmp_path / "a.sqlite")
    store.add_flag(study_key=nkey, plane="axial", slice_index=s // 2, shape=(h, w), n_slices=s, method="dae",
                   label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 20, 30, 20, 30))
    out = export_dicom_seg(store, nkey, nfiles, tmp_path / "seg.dcm")
    raw = out.read_bytes()
    for v in secrets.values():
        assert v.encode() not in raw, v
    seg = pydicom.dcmread(str(out))
    assert str(seg.PatientName) == nkey and seg.StudyID == ""


def test_flags_of_one_file_of_the_study_are_left_out_of_the_series_seg(tmp_path, series):
    """A flag drawn on one file of the series opened alone (same study key, 1 slice) does not block
    the series' export, and alone it is a clear refusal."""
    files, scan, key = series
    s, h, w = scan.shape
    store = Store(tmp_path / "a.sqlite")
    store.add_flag(study_key=key, plane="axial", slice_index=0, shape=(h, w), n_slices=1, method="dae",
                   label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 5, 9, 5, 9))
    with pytest.raises(AnnotationError, match="was drawn on this series"):
        export_dicom_seg(store, key, files, tmp_path / "none.dcm")
    store.add_flag(study_key=key, plane="axial", slice_index=3, shape=(h, w), n_slices=s, method="dae",
                   label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 20, 30, 20, 30))
    seg = pydicom.dcmread(str(export_dicom_seg(store, key, files, tmp_path / "seg.dcm")))
    assert int(seg.NumberOfFrames) == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == scan.meta["SOPInstanceUIDs"][3]


def _copy_series(dest: Path, **values) -> list[Path]:
    """The real series with some header values set (``pydicom`` writes them as given, valid or not)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(str(p))
        for tag in [t for t in ds.keys() if t.group == 0]:  # command-set elements cannot be written
            del ds[tag]
        for k, v in values.items():
            setattr(ds, k, v)
        ds.save_as(str(dest / p.name))
        out.append(dest / p.name)
    return out


def test_seg_of_a_zipped_series_and_of_malformed_headers_quotes_no_value(tmp_path, series, recwarn, caplog):
    """A zipped upload (the page's and API's usual DICOM) exports like its files; a birth date not in DICOM
    format no longer stops the export (the SEG drops it), and a malformed study time is a typed refusal
    that does not quote the value (highdicom's message did, on the page and in the log)."""
    import zipfile

    _, scan, key = series
    s, h, w = scan.shape
    store = Store(tmp_path / "z.sqlite")
    store.add_flag(study_key=key, plane="axial", slice_index=s // 2, shape=(h, w), n_slices=s, method="dae",
                   label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 60, 80, 70, 90))
    bad_birth = _copy_series(tmp_path / "birth", PatientBirthDate="1961-07-04", PatientName="Doe^Jane^SECRETNAME")
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in bad_birth:
            z.write(p, f"series/{p.name}")
    caplog.clear()
    recwarn.clear()
    assert load_scan([zpath]).shape == scan.shape  # the loader reads the malformed date as missing, quietly
    out = export_dicom_seg(store, key, [zpath], tmp_path / "seg.dcm")
    data = out.read_bytes()
    assert b"1961-07-04" not in data and b"SECRETNAME" not in data and b"Doe" not in data
    assert pydicom.dcmread(str(out)).Modality == "SEG"
    bad_time = _copy_series(tmp_path / "time", StudyTime="12h30-SECRET")
    caplog.clear()
    with pytest.raises(AnnotationError, match="header value a DICOM SEG cannot carry") as e:
        export_dicom_seg(store, key, bad_time, tmp_path / "seg2.dcm")
    assert "SECRET" not in str(e.value) and "12h30" not in str(e.value)
    assert not any("1961-07-04" in str(w.message) or "12h30" in str(w.message) for w in recwarn.list)
    assert "1961-07-04" not in caplog.text and "12h30" not in caplog.text, caplog.text


def test_seg_of_a_multi_series_upload_takes_the_chosen_series_and_only_its_flags(tmp_path, series):
    """An upload of two series: the SEG is built on the series the scan was loaded from (it failed:
    "holds 2 DICOM series"), and a flag drawn on another series of the study with as many slices is left
    out (it was painted onto this one)."""
    from anomaly.keys import series_key
    from anomaly.annotations.store import series_label
    from tests.test_io_dicom import _two_series_zip

    _, scan, key = series
    s, h, w = scan.shape
    zpath, first_uid, second_uid = _two_series_zip(tmp_path)
    store = Store(tmp_path / "m.sqlite")
    for z, ser in ((5, series_label(first_uid, "the series")), (9, series_label("1.2.3.other-series-of-20"))):
        store.add_flag(study_key=key, plane="axial", slice_index=z, shape=(h, w), n_slices=s, method="dae",
                       label="confirmed_finding", reviewer="alice", mask=_box_mask(h, w, 60, 80, 70, 90), series=ser)
    with pytest.raises(AnnotationError, match="hold 2 series") as e:
        export_dicom_seg(store, key, [zpath], tmp_path / "x.dcm")
    assert series_key(first_uid) in str(e.value) and first_uid not in str(e.value)
    out = export_dicom_seg(store, key, [zpath], tmp_path / "seg.dcm", series_uid=series_key(first_uid))
    seg = pydicom.dcmread(str(out))
    assert int(seg.NumberOfFrames) == 1  # slice 5 only: the other series' flag is not painted onto this one
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == scan.meta["SOPInstanceUIDs"][5]
