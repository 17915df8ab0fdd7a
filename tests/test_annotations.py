"""Annotation store, service, exports, access control: reliability first.

* many concurrent writers (threads and processes) lose and duplicate nothing;
* stale edits and invalid regions are refused with typed errors;
* export / import round trips without duplicates; exports never hold a patient identifier;
* export-dataset is read by ``anomaly.data.folder`` and evaluated by ``anomaly.evaluate``;
* passwords, sessions and the read-only demo mode.

The service tests use a small stand-in for ``anomaly.analysis.Analysis`` (real anatomy from the
MNI152 template, a known blob in the map) put in the app's analysis cache, so that the service goes
through ``anomaly.ui.callbacks.get_analysis`` like the UI does, without running the models.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from anomaly.annotations import auth
from anomaly.annotations import export as ex
from anomaly.annotations.store import (
    SCHEMA_VERSION,
    FlagNotFoundError,
    InvalidFlagError,
    InvalidRegionError,
    NothingToUndoError,
    ReadOnlyError,
    SchemaError,
    StaleEditError,
    Store,
    _m1_initial,
)
from anomaly.errors import AnomalyError

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "assets" / "templates" / "mni152_2009a_t1_1mm.nii.gz"
DICOM_DIR = ROOT / "assets" / "dicom" / "brain_pd_series"
N_WRITERS = 8
N_PER_WRITER = 200
FAST_ITER = 1000  # PBKDF2 iterations for test accounts (the default is 600 000)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A fresh data dir, database and one annotator account ``alice`` / ``s3cret``."""
    monkeypatch.setenv("ANOMALY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANOMALY_ANNOTATIONS_DB", str(tmp_path / "data" / "ann.sqlite"))
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("ANOMALY_READ_ONLY", raising=False)
    monkeypatch.delenv("ANOMALY_USERS_FILE", raising=False)
    monkeypatch.setenv("ANOMALY_USERS", "alice:" + auth.hash_password("s3cret", FAST_ITER) + ",bob:"
                       + auth.hash_password("hunter2", FAST_ITER))
    auth._FAILS.clear()
    return SimpleNamespace(tmp=tmp_path, db=tmp_path / "data" / "ann.sqlite")


def _flag_kw(i: int = 0, **kw) -> dict:
    d = dict(study_key=f"sk-{i % 3:020d}", plane="axial", slice_index=i % 10, shape=(64, 64), n_slices=10,
             method="ae", label="false_positive", reason="noise", reviewer="alice", box=[1, 2, 10 + i % 5, 12],
             checkpoint_hash="0123456789abcdef", threshold=1.0, series="se-000000000000 (test)")
    d.update(kw)
    return d


# ----------------------------------------------------------------------------- schema and durability


def test_new_db_is_wal_full_sync_and_at_the_latest_schema(env):
    s = Store(env.db)
    assert s.schema_version() == SCHEMA_VERSION == 2
    c = s._conn()
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    rows = sqlite3.connect(env.db).execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    assert s.integrity_check() == "ok"


def test_migrations_upgrade_an_old_db_and_refuse_a_newer_one(env):
    old = env.tmp / "old.sqlite"
    c = sqlite3.connect(old)
    c.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)")
    _m1_initial(c)
    c.execute("INSERT INTO schema_version VALUES (1, 'initial', 'then')")
    c.commit()
    c.close()
    s = Store(old)
    assert s.schema_version() == 2
    idx = {r[0] for r in sqlite3.connect(old).execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"flags_study", "flags_method", "history_flag"} <= idx
    f = s.add_flag(**_flag_kw())
    assert s.get_flag(f.id).version == 1
    c = sqlite3.connect(old)
    c.execute("INSERT INTO schema_version VALUES (99, 'future', 'later')")
    c.commit()
    c.close()
    with pytest.raises(SchemaError, match="newer"):
        Store(old)


def _thread_writer(store: Store, w: int, out: list) -> None:
    for i in range(N_PER_WRITER):
        f = store.add_flag(**_flag_kw(i, reviewer=f"writer{w}", note=f"w{w}-{i}"))
        out.append(f.id)


def test_concurrent_threads_lose_and_duplicate_nothing(env):
    store = Store(env.db)
    results = [[] for _ in range(N_WRITERS)]
    errors = []

    def run(w):
        try:
            _thread_writer(store, w, results[w])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(N_WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    acked = [i for r in results for i in r]
    assert len(acked) == len(set(acked)) == N_WRITERS * N_PER_WRITER
    stored = [f.id for f in Store(env.db).list_flags()]
    assert len(stored) == len(set(stored)) == len(acked)
    assert set(stored) == set(acked)
    notes = sorted(f.note for f in Store(env.db).list_flags())
    assert notes == sorted(f"w{w}-{i}" for w in range(N_WRITERS) for i in range(N_PER_WRITER))
    n_hist = sqlite3.connect(env.db).execute("SELECT COUNT(*) FROM flag_history WHERE action = 'create'").fetchone()[0]
    assert n_hist == len(acked)


def _process_writer(db: str, w: int, out_path: str) -> None:
    store = Store(db, read_only=False)
    ids = []
    for i in range(N_PER_WRITER):
        ids.append(store.add_flag(**_flag_kw(i, reviewer=f"proc{w}", note=f"p{w}-{i}")).id)
    Path(out_path).write_text(json.dumps(ids))


def test_concurrent_processes_lose_and_duplicate_nothing(env):
    Store(env.db)  # created by the parent; the children race on the same file
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(str(env.db), w, str(env.tmp / f"ids{w}.json")))
             for w in range(N_WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    acked = [i for w in range(N_WRITERS) for i in json.loads((env.tmp / f"ids{w}.json").read_text())]
    assert len(acked) == len(set(acked)) == N_WRITERS * N_PER_WRITER
    s = Store(env.db)
    stored = [f.id for f in s.list_flags()]
    assert len(stored) == len(set(stored)) == len(acked) and set(stored) == set(acked)
    assert s.integrity_check() == "ok"


# ----------------------------------------------------------------------------- edits


def test_stale_edit_is_refused_and_nothing_is_overwritten(env):
    s = Store(env.db)
    f = s.add_flag(**_flag_kw(note="first"))
    a_view, b_view = s.get_flag(f.id), s.get_flag(f.id)  # two annotators load version 1
    a = s.update_flag(f.id, a_view.version, reviewer="alice", note="alice's note", reason="artefact")
    assert a.version == 2 and a.note == "alice's note"
    with pytest.raises(StaleEditError) as e:
        s.update_flag(f.id, b_view.version, reviewer="bob", note="bob's note")
    assert isinstance(e.value, AnomalyError)
    msg = str(e.value)
    assert "version 2" in msg and "version 1" in msg and "Nothing was saved" in msg and "alice" in msg
    assert e.value.current.note == "alice's note"
    cur = s.get_flag(f.id)
    assert cur.note == "alice's note" and cur.reason == "artefact" and cur.version == 2
    with pytest.raises(StaleEditError):
        s.delete_flag(f.id, 1, reviewer="bob")
    with pytest.raises(StaleEditError):
        s.update_flag(f.id, None, reviewer="bob", note="no version")
    assert not s.get_flag(f.id).deleted
    # a removed flag cannot be edited until restored
    s.delete_flag(f.id, 2, reviewer="alice")
    with pytest.raises(StaleEditError, match="removed"):
        s.update_flag(f.id, 3, reviewer="alice", note="x")


def test_soft_delete_undo_and_full_history(env):
    s = Store(env.db)
    f = s.add_flag(**_flag_kw(note="v1"))
    s.update_flag(f.id, 1, reviewer="bob", label="confirmed_finding", reason=None, note="v2")
    s.delete_flag(f.id, 2, reviewer="bob")
    assert s.list_flags(f.study_key) == [] and s.get_flag(f.id).deleted
    assert [x.id for x in s.list_flags(f.study_key, include_deleted=True)] == [f.id]
    r = s.undo(f.id, reviewer="bob")  # restores the removal
    assert not r.deleted and r.note == "v2" and r.label == "confirmed_finding" and r.version == 4
    r = s.undo(f.id, reviewer="bob")  # reverts the edit
    assert r.note == "v1" and r.label == "false_positive" and r.reason == "noise"
    r = s.undo(f.id, reviewer="bob")  # undoes the creation
    assert r.deleted
    with pytest.raises(NothingToUndoError):
        s.undo(f.id, reviewer="bob")
    h = s.history(f.id)
    assert [x["action"] for x in h] == ["create", "update", "delete", "undo", "undo", "undo"]
    assert h[0]["previous"] is None
    assert h[1]["previous"]["note"] == "v1" and h[1]["previous"]["version"] == 1 and "mask_png_b64" in h[1]["previous"]
    assert h[2]["previous"]["note"] == "v2" and h[2]["previous"]["deleted"] == 0
    assert all(x["undone"] for x in h[:3])
    assert [x["version"] for x in h] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(FlagNotFoundError):
        s.update_flag("no-such-id", 1, reviewer="bob", note="x")


@pytest.mark.parametrize("region, match", [
    (dict(box=[0, 0, 70, 5]), "outside"),
    (dict(box=[-1, 0, 3, 3]), "outside"),
    (dict(box=[5, 5, 5, 9]), "empty"),
    (dict(box=[9, 5, 3, 9]), "empty"),
    (dict(box=[1, 2, 3]), "four"),
    (dict(box=["a", 0, 1, 1]), "four numbers"),
    (dict(box=None), "no region"),
    (dict(box=None, mask=np.zeros((64, 64), bool)), "empty"),
    (dict(box=None, mask=np.ones((32, 64), bool)), "32x64"),
    (dict(slice_index=10), "out of range"),
    (dict(slice_index=-1), "out of range"),
    (dict(slice_index=2.5), "whole number"),
])
def test_invalid_regions_are_refused(env, region, match):
    s = Store(env.db)
    with pytest.raises(InvalidRegionError, match=match) as e:
        s.add_flag(**_flag_kw(**region))
    assert isinstance(e.value, AnomalyError)
    assert s.count_flags(include_deleted=True) == 0


def test_invalid_fields_are_refused(env):
    s = Store(env.db)
    for kw, match in ((dict(label="maybe"), "label"), (dict(reason="boredom"), "reason"),
                      (dict(reason=None), "needs a reason"), (dict(plane="oblique"), "plane"),
                      (dict(reviewer=""), "reviewer"), (dict(method=""), "method")):
        with pytest.raises(InvalidFlagError, match=match):
            s.add_flag(**_flag_kw(**kw))
    f = s.add_flag(**_flag_kw())
    with pytest.raises(InvalidFlagError, match="cannot edit"):
        s.update_flag(f.id, 1, reviewer="alice", study_key="sk-other")
    with pytest.raises(InvalidRegionError):
        s.update_flag(f.id, 1, reviewer="alice", box=[0, 0, 100, 100])
    assert s.get_flag(f.id).version == 1
    g = s.update_flag(f.id, 1, reviewer="alice", box=[0, 0, 4, 4])
    assert g.box == [0, 0, 4, 4] and g.area_px == 16


# ----------------------------------------------------------------------------- exports


def test_json_export_import_round_trip_without_duplicates(env):
    a = Store(env.db)
    ids = [a.add_flag(**_flag_kw(i, note=f"n{i}")).id for i in range(12)]
    a.delete_flag(ids[0], reviewer="alice")
    a.update_flag(ids[1], 1, reviewer="bob", label="missed_lesion", reason=None)
    p = ex.export_json(a, env.tmp / "flags.json")
    b = Store(env.tmp / "other.sqlite")
    assert ex.import_json(b, p) == {"imported": 12, "skipped": 0, "newer_skipped": 0}
    assert ex.import_json(b, p) == {"imported": 0, "skipped": 12, "newer_skipped": 0}
    fa = {f.id: f for f in a.list_flags(include_deleted=True)}
    fb = {f.id: f for f in b.list_flags(include_deleted=True)}
    assert set(fa) == set(fb) and len(fb) == 12
    for k in fa:
        x, y = fa[k], fb[k]
        assert (x.label, x.reason, x.note, x.box, x.deleted, x.method, x.checkpoint_hash, x.version) == \
               (y.label, y.reason, y.note, y.box, y.deleted, y.method, y.checkpoint_hash, y.version)
        assert np.array_equal(x.mask, y.mask)
    # importing into the source store changes nothing either
    assert ex.import_json(a, p)["imported"] == 0
    assert a.count_flags(include_deleted=True) == 12
    with pytest.raises(AnomalyError, match="not an annotation export"):
        (env.tmp / "bad.json").write_text('{"hello": 1}')
        ex.import_json(b, env.tmp / "bad.json")
    # an audit's files: a flag without an id (it was stored with a NULL key, once more at every import), a
    # flag that is a string, a mask that is no PNG, a bad flag after good ones: typed, and nothing is imported
    import base64
    import json

    data = json.loads(p.read_text())
    for n, (i, change) in enumerate([(0, {"id": None}), (0, "a string"), (3, {"mask_png_b64": base64.b64encode(b"xx").decode()}),
                                     (5, {"method": None})]):
        d = json.loads(p.read_text())
        d["flags"] = [dict(f, id=f"new-{n}-{j}") for j, f in enumerate(data["flags"])]
        d["flags"][i] = change if isinstance(change, str) else dict(d["flags"][i], **change)
        (env.tmp / "bad2.json").write_text(json.dumps(d))
        c = Store(env.tmp / f"fresh{n}.sqlite")
        with pytest.raises(AnomalyError, match="nothing was imported"):
            ex.import_json(c, env.tmp / "bad2.json")
        assert c.count_flags(include_deleted=True) == 0
    # a malformed case (a shape that is not numbers): refused before any flag is written
    d = json.loads(p.read_text())
    d["flags"] = [dict(f, id=f"case-bad-{j}") for j, f in enumerate(data["flags"])]
    d["cases"][0]["shape"] = ["x"]
    (env.tmp / "bad3.json").write_text(json.dumps(d))
    c = Store(env.tmp / "fresh_cases.sqlite")
    with pytest.raises(AnomalyError, match="cases.*malformed.*nothing was imported"):
        ex.import_json(c, env.tmp / "bad3.json")
    assert c.count_flags(include_deleted=True) == 0
    # another station's later edit of a stored flag is skipped, and counted as such
    d = json.loads(p.read_text())
    d["flags"][2] = dict(d["flags"][2], version=7, note="edited elsewhere")
    (env.tmp / "newer.json").write_text(json.dumps(d))
    assert ex.import_json(b, env.tmp / "newer.json")["newer_skipped"] == 1
    # a fresh store gets the cases' review status from the export
    a.set_case_status(fa[ids[3]].study_key, "done", reviewer="alice")
    q = ex.export_json(a, env.tmp / "flags2.json")
    fresh = Store(env.tmp / "fresh_status.sqlite")
    ex.import_json(fresh, q)
    assert fresh.get_case(fa[ids[3]].study_key).status == "done"


def test_exports_never_destroy_the_database_or_an_earlier_export(env, monkeypatch):
    """An export onto the database (or its WAL) is refused; a failed export (a full disk) keeps the earlier
    file whole; the backup is complete and consistent, and restores."""
    import json

    from anomaly.annotations.__main__ import main

    a = Store(env.db)
    f = a.add_flag(**_flag_kw(1, note="keep me"))
    a.set_case_status(f.study_key, "done", reviewer="alice")
    for out in (env.db, Path(str(env.db) + "-wal")):
        with pytest.raises(AnomalyError, match="database itself"):
            ex.export_csv(a, out)
        with pytest.raises(AnomalyError, match="database itself"):
            ex.export_json(a, out)
    assert a.integrity_check() == "ok" and a.count_flags() == 1
    good = ex.export_json(a, env.tmp / "backup.json")
    before = good.read_text()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(AnomalyError, match="No space left on device.*earlier backup.json is kept"):
        ex.export_json(a, good)
    monkeypatch.undo()
    assert good.read_text() == before and not (env.tmp / "backup.json.tmp").exists()
    # the backup command: flags, history, case status; refused onto the database
    assert main(["backup", "--db", str(env.db), "--out", str(env.tmp / "copy.sqlite")]) == 0
    assert main(["backup", "--db", str(env.db), "--out", str(env.db)]) == 2
    copy = Store(env.tmp / "copy.sqlite", read_only=True)
    assert copy.get_flag(f.id).note == "keep me" and copy.get_case(f.study_key).status == "done"
    assert len(copy.history(f.id)) == len(a.history(f.id)) and copy.integrity_check() == "ok"
    assert json.loads(json.dumps(copy.schema_version())) == a.schema_version()


def test_csv_rows_carry_provenance(env):
    import anomaly

    s = Store(env.db)
    for i in range(5):
        s.add_flag(**_flag_kw(i, threshold=1.25))
    p = ex.export_csv(s, env.tmp / "flags.csv")
    rows = list(csv.DictReader(open(p)))
    assert len(rows) == 5
    for r in rows:
        assert r["method"] == "ae" and r["checkpoint_hash"] == "0123456789abcdef"
        assert r["project_version"] == anomaly.__version__ == r["exported_with"]
        assert float(r["threshold"]) == 1.25 and r["series"].startswith("se-")
        assert r["study_key"].startswith("sk-")


def test_nifti_mask_is_in_the_volume_geometry(env):
    from anomaly.data.folder import read_image, read_mask

    s = Store(env.db)
    sk = "sk-" + "1" * 20
    s.ensure_case(sk, shape=(6, 20, 16), spacing=(3.0, 2.0, 1.5), plane="axial")
    s.add_flag(**_flag_kw(study_key=sk, slice_index=2, n_slices=6, shape=(20, 16), box=[3, 4, 8, 10],
                          label="confirmed_finding", reason=None))
    s.add_flag(**_flag_kw(study_key=sk, slice_index=4, n_slices=6, shape=(20, 16), box=[0, 0, 2, 2]))
    # a coronal flag: coronal slice r is vox[::-1, r, :] (6 x 16)
    s.add_flag(**_flag_kw(study_key=sk, plane="coronal", slice_index=15, n_slices=20, shape=(6, 16),
                          box=[0, 1, 1, 3], label="missed_lesion", reason=None))
    p = ex.export_nifti(s, sk, env.tmp / "m.nii.gz")
    vol = read_image(p)
    assert vol.shape == (6, 20, 16)
    want = np.zeros((6, 20, 16))
    want[2, 3:8, 4:10] = 1
    want[4, 0:2, 0:2] = 3
    want[5, 15, 1:3] = 2  # coronal row 0 is the top slice
    assert np.array_equal(vol, want)
    import nibabel as nib

    assert np.allclose(nib.load(str(p)).header.get_zooms(), (1.5, 2.0, 3.0))
    pb = ex.export_nifti(s, sk, env.tmp / "b.nii.gz", labels=ex.LESION_LABELS, binary=True)
    assert np.array_equal(read_mask(pb), (want == 1) | (want == 2))


# ----------------------------------------------------------------------------- service (fake analysis)


class FakeAnalysis:
    """The parts of ``anomaly.analysis.Analysis`` the annotation service uses."""

    def __init__(self, scan, study_key: str, plane: str = "axial"):
        from anomaly.scan import plane_size

        self.scan, self.plane, self.study_key = scan, plane, study_key
        n = plane_size(scan, plane)
        imgs = np.stack([scan.slice(i, plane) for i in range(n)])
        brain = imgs > np.percentile(imgs, 30)
        self.prepared = SimpleNamespace(valid=np.ones(n, bool), original_masks=brain)
        self.results = {m: SimpleNamespace(checkpoint_hash=f"{m}-0123456789ab") for m in ("ae", "zscore")}
        self._maps = {}
        h, w = imgs.shape[1:]
        rr, cc = np.ogrid[:h, :w]
        self.blob = (h // 2, w // 2)
        blob = (rr - h // 2) ** 2 + (cc - w // 2) ** 2 <= 16
        for m in self.results:
            mp_ = np.zeros(imgs.shape, np.float32)
            mp_[n // 2][blob] = 2.0
            mp_[n // 2, 2:5, 2:5] = 2.0  # outside the brain: never part of a region
            self._maps[m] = mp_

    @property
    def n_slices(self):
        return len(self.prepared.valid)

    def pixel_aspect(self):
        from anomaly.analysis import Analysis

        return Analysis.pixel_aspect(self)

    def full_map(self, m):
        return self._maps[m]

    def display_u8(self, index, preset="auto"):
        img = self.scan.slice(index, self.plane)
        return (np.clip(img / max(img.max(), 1e-6), 0, 1) * 255).astype(np.uint8)

    def most_anomalous_slice(self):
        return self.n_slices // 2


@pytest.fixture(scope="module")
def cb():
    from anomaly.ui import callbacks

    return callbacks


def _template_scan(step=12):
    from anomaly.data.folder import read_image
    from anomaly.scan import Scan

    v = read_image(TEMPLATE)[40:150:step, ::3, ::3].copy()
    return Scan(v, spacing=(float(step), 3.0, 3.0), source="nifti", description=f"test volume {v.shape}",
                content_hash="c" * 64)


@pytest.fixture()
def loaded(env, cb):
    from anomaly.keys import study_key

    scan = _template_scan()
    a = FakeAnalysis(scan, study_key(scan.content_hash))
    return SimpleNamespace(key=cb._put(a), a=a)


def _token(name="alice", pw="s3cret"):
    from anomaly.annotations import service as svc

    return svc.login(name, pw)


def test_service_flags_need_a_login_and_go_through_the_loaded_analysis(loaded):
    from anomaly.annotations import auth as au
    from anomaly.annotations import service as svc

    a, key = loaded.a, loaded.key
    mid = a.n_slices // 2
    with pytest.raises(au.AuthError, match="log in"):
        svc.add_flag(key, mid, "ae", "false_positive", "noise", "", "whole slice", token=None)
    with pytest.raises(au.AuthError, match="log in"):
        svc.add_flag(key, mid, "ae", "false_positive", "noise", "", "whole slice", token="forged.token")
    tok = _token()
    r, c = a.blob
    f = svc.add_flag(key, mid, "ae", "false_positive", "normal anatomy", "vessel", "component at point",
                     point=[r + 1, c], threshold=1.0, token=tok)
    assert f.reviewer == "alice" and f.study_key == a.study_key and f.checkpoint_hash == "ae-0123456789ab"
    assert f.area_px > 20
    assert f.mask[r, c] and not f.mask[3, 3]  # the blob, not the out-of-brain patch
    g = svc.add_flag(key, mid, "zscore", "missed_lesion", svc.NO_REASON, "", "box", box=[10, 10, 20, 25], token=tok)
    assert g.reason is None and g.box == [10, 10, 20, 25]
    h = svc.add_flag(key, 0, "ae", "false_positive", "artefact", "", "whole slice", token=tok)
    assert h.box == [0, 0, *a.scan.slice(0).shape]
    with pytest.raises(InvalidRegionError, match="no region"):
        svc.add_flag(key, 0, "ae", "false_positive", "noise", "", "component at point", point=[r, c], token=tok)
    with pytest.raises(InvalidRegionError, match="out of range"):
        svc.add_flag(key, a.n_slices, "ae", "false_positive", "noise", "", "whole slice", token=tok)
    with pytest.raises(InvalidRegionError, match="outside"):
        svc.add_flag(key, 0, "ae", "missed_lesion", None, "", "box", box=[0, 0, 999, 5], token=tok)
    with pytest.raises(InvalidFlagError, match="not run"):
        svc.add_flag(key, 0, "vae", "false_positive", "noise", "", "whole slice", token=tok)
    rows = svc.flag_table(a.study_key)
    assert [x["id"] for x in rows] == [f.id, g.id, h.id]
    # the reviewed slices were kept, de-identified, for export-dataset
    st = svc.get_store()
    assert {x["slice_index"] for x in st.list_slices(a.study_key)} == {mid, 0}
    assert st.get_case(a.study_key).status == "in review"
    assert st.get_case(a.study_key).shape == list(a.scan.shape)
    # edit, stale edit, remove, undo (also "my last change")
    e1 = svc.edit_flag(f.id, 1, None, "noise", "vessel, I think", tok)
    assert e1.version == 2 and e1.updated_by == "alice"
    same = svc.edit_flag(f.id, 2, e1.label, "noise", "vessel, I think", tok)  # a save with nothing changed
    assert same.version == 2 and same.updated_at == e1.updated_at  # no new version, no history row
    with pytest.raises(StaleEditError):
        svc.edit_flag(f.id, 1, None, None, "bob's view", _token("bob", "hunter2"))
    svc.remove_flag(g.id, 1, tok)
    assert g.id not in [x["id"] for x in svc.flag_table(a.study_key)]
    assert not svc.undo(None, a.study_key, tok).deleted  # my last change: the removal
    assert g.id in [x["id"] for x in svc.flag_table(a.study_key)]
    with pytest.raises(NothingToUndoError):
        svc.undo(None, a.study_key, _token("bob", "hunter2"))  # bob changed nothing here
    # preview: upscaled RGB with the flags drawn
    img = svc.preview(key, mid, "ae", 1.0, "box", [10, 10, 20, 25], [r, c])
    kr, kc = svc.preview_scale(a.scan.slice(mid).shape, a.pixel_aspect())
    assert kr == kc == int(kr)  # square pixels of this axial plane: one integer factor
    assert img.shape == (a.scan.shape[1] * int(kr), a.scan.shape[2] * int(kc), 3) and img.dtype == np.uint8
    # a flag of the same study drawn on another series of it (other slice count) is not drawn here
    h, w = a.scan.slice(mid).shape
    other = np.zeros((h, w), bool)
    other[h // 3: h // 2, w // 3: w // 2] = True
    svc.get_store().add_flag(study_key=a.study_key, plane="axial", slice_index=mid, shape=(h, w), n_slices=a.n_slices + 3,
                             method="dae", label="confirmed_finding", reviewer="alice", mask=other)
    assert np.array_equal(svc.preview(key, mid, "ae", 1.0, "box", [10, 10, 20, 25], [r, c]), img)
    assert sorted({row["of"] for row in svc.flag_table(a.study_key)}) == [a.n_slices, a.n_slices + 3]
    # queue, status, summaries
    assert svc.mark_slice_reviewed(key, 1, tok) is True
    assert svc.mark_slice_reviewed(key, 1, tok) is False
    assert svc.set_case_status(a.study_key, "done", tok)["status"] == "done"
    assert [q["study_key"] for q in svc.review_queue("zscore")] == [a.study_key]
    assert svc.review_queue("vae") == [] and svc.review_queue(None, "in review") == []
    assert svc.queue_step(None, 1) == a.study_key == svc.queue_step(a.study_key, -1)
    summ = {r["method"]: r for r in svc.fp_summary()}
    assert summ["ae"]["noise"] == 1 and summ["ae"]["artefact"] == 1 and summ["ae"]["false positives"] == 2
    assert summ["zscore"]["missed lesions"] == 1
    fig = svc.fp_figure(svc.fp_summary())
    assert fig.axes


# ----------------------------------------------------------------------------- no identifiers


def test_exports_hold_no_patient_identifier(env, cb, tmp_path):
    import pydicom

    from anomaly.annotations import service as svc
    from anomaly.io import load_scan
    from anomaly.keys import study_key

    src = tmp_path / "dcm"
    src.mkdir()
    name, pid, birth, acc = "Doe^Jane", "PID-7Q3X9Z", "19610203", "ACC-55K1"
    for p in sorted(DICOM_DIR.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        for tag in [t for t in ds.keys() if t.group == 0]:  # command-set elements cannot be written
            del ds[tag]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = name, pid, birth, acc
        ds.save_as(src / p.name)
    scan = load_scan(sorted(src.glob("*.dcm")))
    assert scan.source == "dicom" and scan.study_uid
    study_uid, series_uid = scan.study_uid, scan.meta["SeriesInstanceUID"]
    sop_uids = [u for u in scan.meta["SOPInstanceUIDs"] if u]
    a = FakeAnalysis(scan, study_key(scan.study_uid))
    key = cb._put(a)
    tok = _token()
    svc.add_flag(key, a.n_slices // 2, "ae", "false_positive", "noise", "", "component at point", point=list(a.blob),
                 token=tok)
    svc.add_flag(key, 3, "ae", "confirmed_finding", None, "", "box", box=[100, 100, 140, 150], token=tok)
    svc.mark_slice_reviewed(key, 5, tok)
    st = svc.get_store()
    out = tmp_path / "out"
    ex.export_csv(st, out / "f.csv")
    ex.export_json(st, out / "f.json")
    ex.export_nifti(st, a.study_key, out / "m.nii.gz")
    ex.export_dataset(st, out / "ds")
    ex.export_fp_rates(st, out / "fp.csv")
    st.close()
    forbidden = [name, "Doe", "Jane", pid, birth, acc, study_uid, series_uid, *sop_uids]
    files = [p for p in out.rglob("*") if p.is_file()] + [p for p in env.db.parent.glob("ann.sqlite*")]
    assert len(files) > 8
    for p in files:
        data = p.read_bytes()
        if p.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        for s in forbidden:
            assert s.encode() not in data, (s, p)
    rows = list(csv.DictReader(open(out / "f.csv")))
    assert {r["study_key"] for r in rows} == {a.study_key} and all(r["series"].startswith("se-") for r in rows)


# ----------------------------------------------------------------------------- data set round trip


def test_export_dataset_round_trip_through_read_folder_and_evaluate(env, cb, tmp_path):
    from scipy import ndimage

    from anomaly.annotations import service as svc
    from anomaly.annotations.__main__ import main
    from anomaly.calibration import Calibration
    from anomaly.checkpoints import write_card
    from anomaly.data.folder import iter_samples, read_folder
    from anomaly.evaluate import evaluate
    from anomaly.keys import study_key
    from anomaly.methods import base
    from anomaly.methods.base import AnomalyMethod, MethodOutput, register

    scan = _template_scan(step=10)
    a = FakeAnalysis(scan, study_key("dataset-test"))
    key = cb._put(a)
    tok = _token()
    mid = a.n_slices // 2
    svc.add_flag(key, mid, "ae", "confirmed_finding", None, "", "component at point", point=list(a.blob), token=tok)
    svc.add_flag(key, mid - 2, "ae", "missed_lesion", None, "", "box", box=[30, 25, 40, 35], token=tok)
    svc.add_flag(key, mid + 2, "zscore", "false_positive", "partial volume", "", "box", box=[20, 20, 30, 30], token=tok)
    for i in (1, 2):
        svc.mark_slice_reviewed(key, i, tok)
    out = tmp_path / "ds"
    assert main(["export-dataset", "--out", str(out), "--db", str(env.db)]) == 0
    items = read_folder(out)
    assert len(items) == 5
    samples = {s.item.name: s for s in iter_samples(out)}
    lab = {n.rsplit("_", 1)[1]: s.label for n, s in samples.items()}
    assert lab == {f"{mid:04d}": 1, f"{mid - 2:04d}": 1, f"{mid + 2:04d}": 0, "0001": 0, "0002": 0}
    s_mid = samples[f"{a.study_key}_axial_{mid:04d}"]
    assert s_mid.mask[a.blob] and s_mid.image.shape == scan.slice(mid).shape
    # the stored slice is the scan's slice (16-bit, up to scale)
    ref = scan.slice(mid)
    assert np.corrcoef(s_mid.image.ravel(), ref.ravel())[0, 1] > 0.999
    rows = {r["file"]: r for r in csv.DictReader(open(out / "labels.csv"))}
    r = rows[f"{a.study_key}_axial_{mid + 2:04d}.png"]
    assert r["method"] == "zscore" and r["n_false_positives"] == "1" and r["fp_reasons"] == "partial volume"
    assert r["checkpoint_hash"] == "zscore-0123456789ab" and r["project_version"]
    fp = list(csv.DictReader(open(out / "fp_rates.csv")))
    z = next(x for x in fp if x["method"] == "zscore")
    assert z["false_positives"] == "1" and z["reviewed_slices"] == "5" and float(z["fp_per_reviewed_slice"]) == 0.2

    class TinyBlob(AnomalyMethod):
        name, title, paper, citation = "annottest", "test", "test", "test"

        def predict(self, images, masks, seed=0):
            blur = np.stack([ndimage.gaussian_filter(x, 3) for x in images])
            return MethodOutput(pseudo_healthy=blur, residual=np.abs(images - blur))

    ck = tmp_path / "ckpt"
    (ck / "annottest").mkdir(parents=True)
    write_card(ck / "annottest", {"calibration": Calibration(0.08, [float(x) for x in np.linspace(0, 0.3, 201)],
                                                             99.5, 10).to_dict(), "checkpoint_hash": "test"})
    base._discover()
    register(TinyBlob)
    try:
        res = evaluate(out, ["annottest"], tmp_path / "eval", checkpoint_root=ck, bootstrap=20, progress=False)
    finally:
        base._REGISTRY.pop("annottest", None)
        base.clear_cache()
    assert res["n_images"] == 5 and res["n_anomalous"] == 2 and res["n_normal"] == 3
    assert "annottest" in res["methods"] and res["methods"]["annottest"]["image_auroc"] is not None


def test_cli_export_import_and_check(env, capsys):
    from anomaly.annotations.__main__ import main

    s = Store(env.db)
    for i in range(4):
        s.add_flag(**_flag_kw(i))
    js, cs = env.tmp / "a.json", env.tmp / "a.csv"
    assert main(["export-json", "--out", str(js), "--db", str(env.db)]) == 0
    assert main(["export-csv", "--out", str(cs), "--db", str(env.db)]) == 0
    other = env.tmp / "b.sqlite"
    assert main(["import-json", str(js), "--db", str(other)]) == 0
    assert main(["import-json", str(js), "--db", str(other)]) == 0
    out = capsys.readouterr().out
    assert "imported 4 flag(s), skipped 0" in out and "imported 0 flag(s), skipped 4" in out
    assert main(["check", "--db", str(other)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["integrity"] == "ok" and info["flags"] == 4 and info["schema_version"] == SCHEMA_VERSION
    assert main(["import-json", str(env.tmp / "missing.json"), "--db", str(other)]) == 2
    assert "error:" in capsys.readouterr().err
    # a flag's history, by its short id as the app shows it: who changed what, and what it read before
    f = s.list_flags()[0]
    s.update_flag(f.id, 1, reviewer="bob", note="bob's reading")
    assert main(["history", f.id[:8], "--db", str(env.db)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["action"] for r in rows] == ["create", "update"] and rows[1]["by"] == "bob"
    assert rows[1]["before"]["note"] == f.note and rows[1]["version"] == 2 and "mask_png_b64" not in rows[1]["before"]
    assert main(["history", "nosuchid", "--db", str(env.db)]) == 2


# ----------------------------------------------------------------------------- access


def test_password_hashing_and_login(env, monkeypatch):
    h = auth.hash_password("correct horse", 2000)
    algo, iters, salt, dk = h.split("$")
    assert algo == "pbkdf2_sha256" and iters == "2000" and len(salt) == 32 and len(dk) == 64
    assert auth.verify_password("correct horse", h)
    assert not auth.verify_password("correct horsE", h)
    assert not auth.verify_password("correct horse", "md5$1$00$00") and not auth.verify_password("x", "garbage")
    assert auth.hash_password("correct horse", 2000) != h  # salted
    assert auth.check_login("alice", "s3cret") and not auth.check_login("alice", "wrong")
    assert not auth.check_login("mallory", "s3cret")
    tok = auth.login("alice", "s3cret")
    assert auth.verify_token(tok) == "alice"
    payload, sig = tok.split(".")
    forged = auth._b64(json.dumps({"u": "bob", "exp": 9999999999, "fp": "x"}).encode()) + "." + sig
    assert auth.verify_token(forged) is None and auth.verify_token(tok[:-2] + "xx") is None
    assert auth.verify_token(None) is None and auth.verify_token("") is None
    assert auth.verify_token(auth.issue_token("alice", ttl_s=-1)) is None  # expired
    with pytest.raises(auth.AuthError, match="wrong"):
        auth.login("alice", "nope")
    # a password change ends existing sessions
    monkeypatch.setenv("ANOMALY_USERS", "alice:" + auth.hash_password("new-pass", FAST_ITER))
    assert auth.verify_token(tok) is None
    # throttling after repeated failures
    auth._FAILS.clear()
    for _ in range(auth.MAX_FAILURES):
        assert not auth.check_login("alice", "bad")
    with pytest.raises(auth.AuthError, match="too many"):
        auth.check_login("alice", "new-pass")


def test_users_file_and_add_user_cli(env, monkeypatch, capsys):
    from anomaly.annotations.__main__ import main

    uf = env.tmp / "users.txt"
    monkeypatch.delenv("ANOMALY_USERS")
    monkeypatch.setenv("ANOMALY_USERS_FILE", str(uf))
    assert not auth.annotation_enabled()
    monkeypatch.setattr("sys.stdin", io.StringIO("pa55 word\n"))
    assert main(["add-user", "carol", "--iterations", "1500"]) == 0
    line = uf.read_text().strip()
    assert line.startswith("carol:pbkdf2_sha256$1500$") and "pa55" not in line
    assert oct(uf.stat().st_mode & 0o777) == "0o600"
    assert auth.annotation_enabled() and auth.check_login("carol", "pa55 word")
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    assert main(["add-user", "carol"]) == 2
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setenv("ANOMALY_USERS", "dave:" + auth.hash_password("pw", FAST_ITER))
    assert set(auth.load_users()) == {"carol", "dave"}
    uf.write_text(uf.read_text() + "not a valid line\n")
    with pytest.raises(auth.AuthError, match="bad account line"):
        auth.load_users()


def test_no_accounts_means_view_only_with_instructions(env, monkeypatch, loaded):
    from anomaly.annotations import service as svc

    monkeypatch.delenv("ANOMALY_USERS")
    st = svc.access_state(None)
    assert not st["enabled"] and "add-user" in st["message"] and "view-only" in st["message"]
    with pytest.raises(auth.AuthError, match="not enabled"):
        svc.add_flag(loaded.key, 0, "ae", "false_positive", "noise", "", "whole slice", token=None)


def test_read_only_mode_stores_nothing(env, monkeypatch, loaded):
    from anomaly.annotations import config
    from anomaly.annotations import service as svc

    tok = _token()
    for setting in ({"ANOMALY_READ_ONLY": "1"}, {"SPACE_ID": "someone/space"}):
        for k, v in setting.items():
            monkeypatch.setenv(k, v)
        assert config.is_read_only()
        st = svc.access_state(tok)
        assert st["read_only"] and st["user"] is None and "nothing is stored" in st["message"]
        with pytest.raises(ReadOnlyError):
            svc.add_flag(loaded.key, 0, "ae", "false_positive", "noise", "", "whole slice", token=tok)
        with pytest.raises(ReadOnlyError):
            svc.mark_slice_reviewed(loaded.key, 0, tok)
        with pytest.raises(ReadOnlyError):
            svc.login("alice", "s3cret")
        assert svc.flag_table(loaded.a.study_key) == [] and svc.review_queue() == []
        for k in setting:
            monkeypatch.delenv(k)
    assert not env.db.exists() and not list(env.db.parent.glob("ann.sqlite*"))
    with pytest.raises(ReadOnlyError):
        Store(env.tmp / "x.sqlite", read_only=True).add_flag(**_flag_kw())
    assert not (env.tmp / "x.sqlite").exists()
    monkeypatch.setenv("SPACE_ID", "someone/space")
    monkeypatch.setenv("ANOMALY_READ_ONLY", "0")
    assert not config.is_read_only()


def test_the_same_flag_submitted_twice_in_a_row_is_stored_once(loaded, monkeypatch):
    """A double click on Add flag: the second identical flag within seconds is refused, clearly."""
    from anomaly.annotations import service as svc
    from anomaly.annotations.store import InvalidFlagError

    a, key = loaded.a, loaded.key
    tok = _token()
    f = svc.add_flag(key, 2, "ae", "false_positive", "noise", "first", "box", box=[10, 10, 20, 25], token=tok)
    with pytest.raises(InvalidFlagError, match=f"just added \\(flag {f.id[:8]}"):
        svc.add_flag(key, 2, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=tok)
    # another region, label or reviewer is another flag
    svc.add_flag(key, 2, "ae", "false_positive", "noise", "", "box", box=[10, 10, 21, 25], token=tok)
    svc.add_flag(key, 2, "ae", "confirmed_finding", None, "", "box", box=[10, 10, 20, 25], token=tok)
    svc.add_flag(key, 2, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=_token("bob", "hunter2"))
    # later than the double-click window: a deliberate second flag is stored
    monkeypatch.setattr(svc, "DOUBLE_SUBMIT_S", 0.0)
    svc.add_flag(key, 2, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=tok)
    assert len([x for x in svc.flag_table(a.study_key) if x["slice"] == 2]) == 5
    # six identical requests at the same instant (an audit stored two): the check runs under the write lock
    import threading

    monkeypatch.setattr(svc, "DOUBLE_SUBMIT_S", 10.0)
    go, stored, refused = threading.Barrier(6), [], []

    def click():
        go.wait()
        try:
            stored.append(svc.add_flag(key, 4, "ae", "false_positive", "noise", "", "box", box=[30, 30, 40, 44], token=tok))
        except InvalidFlagError:
            refused.append(1)

    threads = [threading.Thread(target=click) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stored) == 1 and len(refused) == 5


def test_case_last_change_follows_flag_edits_and_undo(loaded):
    """The case line's "last change" is the latest of a status change and any flag change (an undo too)."""
    from anomaly.annotations import service as svc

    a, key = loaded.a, loaded.key
    tok = _token()
    f = svc.add_flag(key, 3, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=tok)
    svc.set_case_status(a.study_key, "done", tok)
    bob = _token("bob", "hunter2")
    svc.edit_flag(f.id, 1, None, "artefact", "bob's", bob)
    text = svc.case_info(a.study_key)["text"]
    assert "last change by bob" in text
    svc.undo(f.id, None, tok, version=2)
    info = svc.case_info(a.study_key)
    last_undo = svc.get_store().history(f.id)[-1]
    assert last_undo["action"] == "undo"
    assert f"last change by alice at {last_undo['at'][:19].replace('T', ' ')} UTC" in info["text"]
    assert info["status"] == "done"  # a flag change does not touch the status, nor who set it
    assert svc.get_store().get_case(a.study_key).reviewer == "alice"


def test_preview_is_titled_with_its_slice_and_carries_orientation_letters(loaded):
    from anomaly.annotations import service as svc
    from anomaly.ui.annotate import PREVIEW_LABEL, on_preview

    a, key = loaded.a, loaded.key
    mid = a.n_slices // 2
    out = on_preview(key, mid, "ae", 1.0, None, "", "", "", "", "", "")
    assert out["label"].startswith(f"Slice {mid} of {a.n_slices}, {a.plane}")
    img = out["value"]
    assert a.scan.known_frame
    # yellow letters (radiological: the patient's right on the image's left) where the slice has none
    plain = a.display_u8(mid)
    assert (img == (255, 255, 0)).all(axis=2).sum() > 20 and img.shape[0] >= 64
    assert not np.array_equal(img[..., 0], np.repeat(np.repeat(plain, img.shape[0] // plain.shape[0], 0),
                                                     img.shape[1] // plain.shape[1], 1))
    # no scan: no image, the plain title
    empty = on_preview("no-such-key", 0, "ae", 1.0, None, "", "", "", "", "", "")
    assert empty["value"] is None and empty["label"] == PREVIEW_LABEL


def test_undo_never_reverts_another_annotators_newer_change_unseen(loaded):
    from anomaly.annotations import service as svc

    a, key = loaded.a, loaded.key
    alice, bob = _token(), _token("bob", "hunter2")
    f = svc.add_flag(key, 4, "ae", "false_positive", "noise", "alice's", "box", box=[10, 10, 20, 25], token=alice)
    svc.edit_flag(f.id, 1, None, None, "alice again", alice)  # version 2, alice's last change
    svc.edit_flag(f.id, 2, None, None, "bob's note", bob)  # version 3: alice has not seen it
    with pytest.raises(StaleEditError, match="version 3"):
        svc.undo(f.id, None, alice, version=2)  # the selected flag, at the version alice sees
    with pytest.raises(StaleEditError, match="bob changed after you"):
        svc.undo(None, a.study_key, alice)  # "my last change here": that flag, changed by bob since
    assert svc.get_flag(f.id).note == "bob's note" and svc.get_flag(f.id).version == 3
    assert svc.undo(f.id, None, bob, version=3).note == "alice again"  # bob undoes his own
    assert svc.undo(None, a.study_key, alice).note == "alice's"  # now alice's is the latest again


def test_notes_are_bounded(loaded):
    from anomaly.annotations import service as svc
    from anomaly.annotations.store import MAX_NOTE_CHARS, InvalidFlagError

    key, tok = loaded.key, _token()
    with pytest.raises(InvalidFlagError, match=f"at most {MAX_NOTE_CHARS}"):
        svc.add_flag(key, 5, "ae", "false_positive", "noise", "x" * (MAX_NOTE_CHARS + 1), "whole slice", token=tok)
    f = svc.add_flag(key, 5, "ae", "false_positive", "noise", "x" * MAX_NOTE_CHARS, "whole slice", token=tok)
    with pytest.raises(InvalidFlagError, match="at most"):
        svc.edit_flag(f.id, 1, None, None, "y" * 5_000_000, tok)


def test_panel_forgets_the_selection_on_a_new_scan_and_jumps_only_to_a_matching_series(loaded):
    """Save / Remove / Undo act on the selected flag: after another scan is loaded the selection is
    gone; a flag of the same study drawn on another series (other slice count) is not jumped to."""
    import gradio as gr
    import pandas as pd

    from anomaly.annotations import service as svc
    from anomaly.ui import refusal_as_message
    from anomaly.ui.annotate import NO_SELECTION, on_edit, on_scan, on_select_flag

    a, key = loaded.a, loaded.key
    out = on_scan(key, "", ["ae"], 1.0)
    assert len(out) == 14 and out[-7:-2] == NO_SELECTION and out[-2:] == ["", ""]  # and no message left over
    assert on_scan("no-such-key", "", ["ae"], 1.0)[-7:] == NO_SELECTION + ["", ""]
    h, w = a.scan.slice(3).shape
    m = np.zeros((h, w), bool)
    m[5:9, 5:9] = True
    other = svc.get_store().add_flag(study_key=a.study_key, plane="axial", slice_index=a.n_slices + 1, shape=(h, w),
                                     n_slices=a.n_slices + 3, method="ae", label="confirmed_finding", reviewer="alice",
                                     mask=m)
    rows = pd.DataFrame([{"id": other.id}])
    infos = []
    orig = gr.Info
    gr.Info = lambda msg, *x, **k: infos.append(msg)
    try:
        sel = on_select_flag(rows, key, gr.SelectData(None, {"index": [0, 0], "value": None}))
    finally:
        gr.Info = orig
    assert sel[0] == other.id and sel[-1] == gr.update()  # selected, but no jump to a slice this scan lacks
    assert infos and "load the same series" in infos[0]
    # on the page, Save with no flag selected is a message, not an error on every box
    warned = []
    gr.Warning, orig_w = (lambda msg, *x, **k: warned.append(msg)), gr.Warning
    try:
        res = refusal_as_message(on_edit, 10, 4, "Not saved")("", "", None, None, "", _token(), a.study_key)
    finally:
        gr.Warning = orig_w
    assert res[4].startswith("**Not saved:**") and "select a flag" in res[4]
    assert all(r == gr.update() for i, r in enumerate(res) if i != 4) and "`" not in warned[0]


def test_the_page_keeps_a_login_across_restarts(env, monkeypatch):
    """The browser-stored token is encrypted with a key derived from the kept session secret, the same
    at every launch (Gradio's default is a new random key per launch)."""
    from anomaly.annotations import auth

    monkeypatch.delenv(auth.SECRET_ENV, raising=False)
    first = auth.browser_state_secret()
    assert first and first == auth.browser_state_secret() and first.encode() != auth.session_secret()
    monkeypatch.setenv(auth.SECRET_ENV, "another")
    assert auth.browser_state_secret() != first


def test_a_change_of_a_selected_flag_needs_the_version_the_annotator_sees(loaded):
    """Remove, undo and edit of a selected flag without a version skipped the stale check: bob's undo
    reverted alice's newer edit unseen. Now the version is required and must be a whole number."""
    from anomaly.annotations import service as svc
    from anomaly.annotations.store import InvalidFlagError

    tok = _token()
    f = svc.add_flag(loaded.key, 3, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=tok)
    for bad in (None, "", "x", "2.5", 0):
        with pytest.raises(InvalidFlagError, match="version"):
            svc.remove_flag(f.id, bad, tok)
        with pytest.raises(InvalidFlagError, match="version"):
            svc.undo(f.id, None, tok, version=bad)
        with pytest.raises(InvalidFlagError, match="version"):
            svc.edit_flag(f.id, bad, None, None, "note", tok)
    assert svc.get_store().get_flag(f.id).version == 1 and not svc.get_store().get_flag(f.id).deleted
    assert svc.remove_flag(f.id, "1", tok).deleted and not svc.undo(f.id, None, tok, version=2.0).deleted
    from anomaly.ui.annotate import on_edit

    out = on_edit(f.id, "3.0", None, None, "a note", tok, None)  # a version typed as "3.0" (it crashed after saving)
    assert any("Saved flag" in str(o) for o in out)


def test_database_faults_are_typed_and_change_nothing(env):
    """A folder or a non-SQLite file as the database, and a failed write inside a transaction: typed errors
    (they were raw sqlite3 errors), and the file and saved flags are untouched."""
    from anomaly.annotations.store import AnnotationError

    with pytest.raises(AnnotationError, match="is a folder"):
        Store(env.tmp)
    junk = env.tmp / "notes.txt"
    junk.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(AnnotationError, match="not an annotation database"):
        Store(junk)
    assert junk.read_bytes() == b"these are my notes, not a database" * 100
    s = Store(env.db)
    f = s.add_flag(**_flag_kw(1))
    with pytest.raises(AnnotationError, match="nothing was written"):
        with s._write() as c:
            c.execute("UPDATE flags SET note = 'half' WHERE id = ?", (f.id,))
            c.execute("INSERT INTO no_such_table VALUES (1)")
    assert s.get_flag(f.id).note == ""


def test_a_status_set_by_someone_since_is_refused_not_overwritten(loaded, monkeypatch):
    """Two reviewers on one case: the page sends the case version it shows; bob's 'done' after alice's
    change from the same view is refused and the case is shown afresh (the last one used to win unseen)."""
    import gradio as gr

    from anomaly.annotations import service as svc
    from anomaly.ui.annotate import _case_outputs, on_status

    warned = []
    monkeypatch.setattr(gr, "Warning", lambda msg, *a, **k: warned.append(msg))
    alice, bob = _token(), _token("bob", "hunter2")
    svc.add_flag(loaded.key, 3, "ae", "false_positive", "noise", "", "box", box=[10, 10, 20, 25], token=alice)
    sk = loaded.a.study_key
    seen = _case_outputs(sk)[-1]  # what both pages show
    text, status, seen_a = on_status(sk, "done", alice, seen)
    assert status["value"] == "done" and seen_a == [sk, seen[1] + 1]
    text, status, seen_b = on_status(sk, "in review", bob, seen)  # bob's page still shows the old version
    assert text.startswith("**Not set.**") and status["value"] == "done" and seen_b == seen_a and warned
    assert svc.get_store().get_case(sk).status == "done" and svc.get_store().get_case(sk).reviewer == "alice"
    assert on_status(sk, "in review", bob, seen_b)[1]["value"] == "in review"  # after seeing it, bob may
    # a case nobody has touched yet (no row, shown as version 0): the first status set wins, a second from
    # the same view is refused (it overwrote the first unseen)
    fresh = "sk-" + "f" * 20
    assert _case_outputs(fresh)[-1] == [fresh, 0]
    assert on_status(fresh, "done", alice, [fresh, 0])[1]["value"] == "done"
    assert on_status(fresh, "in review", bob, [fresh, 0])[0].startswith("**Not set.**")
    assert svc.get_store().get_case(fresh).status == "done"
    # what a session saw of one case says nothing of another (an API session's state)
    assert on_status(fresh, "in review", bob, [sk, 0])[1]["value"] == "in review"


def test_a_dropped_store_closes_its_database_at_once(env):
    """A Store that goes out of use closes its connections at once: a sqlite3 connection sits in a reference
    cycle, so it stayed open until a garbage collection, and children forked meanwhile inherited it and lost
    committed flags (test_concurrent_processes_lose_and_duplicate_nothing failed whenever no collection
    had run before the fork)."""
    import gc
    import os

    def open_files():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(env.db)):
                out.append(target)
        return out

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    gc.disable()
    try:
        Store(env.db).add_flag(**_flag_kw(1))
        assert open_files() == []
        # a long-lived store (the app's) used from short-lived threads: each thread's connection goes with it
        import threading

        s = Store(env.db)
        for _ in range(50):
            t = threading.Thread(target=s.count_flags)
            t.start()
            t.join()
        assert len([f for f in open_files() if f == str(env.db)]) <= 2  # not one per thread that used it (50)
    finally:
        gc.enable()
