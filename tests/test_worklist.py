"""The Worklist tab's callbacks as plain functions: open a results folder, rank, filter, join the
review status, show stored thumbnails, open a study in the review view at its top slice."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from anomaly.batch import discover
from anomaly.batch.scorer import StudyScorer
from anomaly.ui import worklist as wl
from tests.test_batch import METHODS, make_cohort

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(autouse=True)
def results_roots_here(tmp_path_factory, monkeypatch):
    """The Worklist opens results only under its roots: pytest's temporary folders are one here."""
    monkeypatch.setenv(wl.ROOTS_ENV, str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_checkpoints, monkeypatch_module):
    """A results folder written by the batch scorer (one part per study), and a fresh annotation store."""
    import anomaly.methods.base as base

    mp = monkeypatch_module

    tmp = tmp_path_factory.mktemp("worklist")
    mp.setenv("ANOMALY_DATA_DIR", str(tmp / "data"))
    mp.setenv("ANOMALY_ANNOTATIONS_DB", str(tmp / "data" / "ann.sqlite"))
    mp.delenv("ANOMALY_READ_ONLY", raising=False)
    mp.delenv("SPACE_ID", raising=False)
    mp.setattr(base, "CHECKPOINT_ROOT", tiny_checkpoints)
    base.clear_cache()
    cohort = make_cohort(tmp / "cohort", n_volumes=2)
    out = tmp / "results"
    out.mkdir()
    table = StudyScorer(METHODS, str(tiny_checkpoints), maps_out=str(out))(pd.DataFrame(discover(cohort)))
    for i in range(table.num_rows):
        pq.write_table(table.slice(i, 1), out / f"part-{i:03d}.parquet")
    yield out
    base.clear_cache()


def test_open_folder_ranks_by_score(results):
    upd, table, gallery, info = wl.on_open_folder(str(results), None)
    assert upd["value"] == "consensus" and upd["choices"][0] == "consensus"
    assert len(table) == 5 and list(table["rank"]) == [1, 2, 3, 4, 5]
    scores = table["score"].dropna().tolist()
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert table.iloc[-1]["result"].startswith("failed:")  # the corrupt file, last
    assert "source" not in table and not table.astype(str).apply(lambda c: c.str.contains("/")).any().any()
    assert len(gallery) == 4 and gallery[0][0].shape == (64, 64, 3)  # the ranking method's own
    assert "5 studies" in info and "another study-key salt" not in info
    import re  # captions say the percentile as a reader does: 71st, 92nd, 100th (not "71th")

    from anomaly.calibration import percentile_text

    for (_, cap), (_, t) in zip(gallery, table.dropna(subset=["percentile"]).iterrows()):
        assert cap.endswith(f"{percentile_text(round(t['percentile']))} pct") and re.search(r"\d+(st|nd|rd|th) pct$", cap)
    # a failed study is not opened: the reason, not Error badges over the Review tab
    failed_key = table.iloc[-1]["study"]
    df0 = wl.load_results(results)
    assert "was not scored by the batch run" in wl.not_openable(df0, failed_key)
    assert wl.not_openable(df0, table.iloc[0]["study"]) is None
    # results keyed with another salt (another machine's data folder): said, not silent
    df = wl.load_results(results)
    assert wl.keyed_with_this_salt(df) is True
    from anomaly.keys import study_key

    other = df.assign(study_key=[study_key(str(h), salt="another-salt") for h in df["content_hash"]])
    assert wl.keyed_with_this_salt(other) is False
    assert "another study-key salt" in wl.summary(other, table, "consensus")
    zt = wl.worklist_rows(wl.load_results(results), "zscore", review={})
    zs = zt["score"].dropna().tolist()
    assert zs == sorted(zs, reverse=True)


def test_filters_and_review_status(results):
    from anomaly.annotations import service as svc

    df = wl.load_results(results)
    table = wl.worklist_rows(df, "consensus")
    top = table.iloc[0]["study"]
    store = svc.get_store()
    store.ensure_case(top)
    store.set_case_status(top, "in review", reviewer="alice")
    t, _, _ = wl.on_filter(str(results), "consensus", 0, False, "in review")
    assert list(t["study"]) == [top] and t.iloc[0]["review"] == "in review"
    t, _, _ = wl.on_filter(str(results), "consensus", 0, True, wl.ANY)
    assert len(t) >= 1 and t["OOD"].str.startswith("yes").all()  # the PD-weighted DICOM series
    p = float(table["percentile"].dropna().median())
    t, _, _ = wl.on_filter(str(results), "consensus", p, False, wl.ANY)
    assert 1 <= len(t) < len(table) and (t["percentile"] >= p).all()
    rows = json.loads(wl.worklist_api(str(results), "ae"))
    assert len(rows) == 5 and rows[0]["rank"] == 1
    ok = [r for r in rows if r["result"] == "ok"]
    assert ok and all(isinstance(r["opens at slice"], int) and isinstance(r["slices"], int) for r in ok)
    assert all(r["slices"] is None for r in rows if r["result"] != "ok")  # a failed study: null, not NaN


def test_thumbnail_and_open_study_at_top_slice(results):
    from anomaly.ui import callbacks as cb
    from anomaly.ui.app import on_upload

    df = wl.load_results(results)
    row = df[(df["kind"] == "nifti") & (df["status"] == "ok")].iloc[0]
    key = row["study_key"]
    assert wl.thumbnail(df, key, "ae").shape == (64, 64, 3)
    assert wl.thumbnail(df, key).shape == (96, 96, 3)
    files = wl.open_study(str(results), key)
    k, a = cb.load_and_analyse(files, METHODS)
    assert a.study_key == key and a.most_anomalous_slice() == row["top_slice"]
    shown = wl.worklist_rows(df, "ae", review={}).set_index("study").loc[key]
    assert shown["opens at slice"] == row["top_slice"] and shown["method's top slice"] == row["ae__top_slice"]
    np.testing.assert_allclose(a.results["ae"].scores, row["ae__curve"], rtol=1e-6)
    out = on_upload(files, None, "axial", METHODS, "auto", 0.5, 1.0, "both")
    if inspect.isgenerator(out):  # a progressive upload callback: its last update is the full view
        out = list(out)[-1]
    assert out[1]["value"] == row["top_slice"]
    dicom = df[df["kind"] == "dicom"].iloc[0]
    assert len(wl.open_study(str(results), dicom["study_key"])) == 20
    with pytest.raises(Exception):
        wl.open_study(str(results), "")


def test_missing_folder_is_a_clear_error(tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="'nothing' does not exist"):
        wl.on_open_folder(str(tmp_path / "nothing"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(gr.Error, match="no batch results in 'empty'"):
        wl.on_open_folder(str(tmp_path / "empty"), None)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(gr.Error, match="is a file"):
        wl.on_open_folder(str(tmp_path / "notes.txt"), None)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(gr.Error, match="none of the 1 results part"):
        wl.on_open_folder(str(bad), None)


def test_app_has_a_worklist_tab_with_named_events():
    from anomaly.ui.app import build_app

    demo = build_app()
    deps = demo.config["dependencies"]
    names = {d.get("api_name") for d in deps}
    assert {"worklist_open_folder", "worklist_open_study", "worklist", "analyse_view"} <= names
    # opening a study also sets the review view's Methods boxes
    methods_id = next(c["id"] for c in demo.config["components"] if c.get("props", {}).get("label", "").startswith("Methods"))
    opened = next(d for d in deps if d.get("api_name") == "worklist_open_study")
    assert methods_id in opened["outputs"]
    # ... and empties the upload box (it listed the previous scan, which Analyse would then score)
    files_id = next(c["id"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "scan-files")
    assert files_id in opened["outputs"]
    # the Methods boxes set so do not redraw the view (a user's ticks do, .input): the redraw read the
    # slider before the study's slice reached it and showed slice 0 under "slice 33"
    ticks = [d for d in deps if d.get("api_name", "").startswith("on_methods")]
    assert ticks and all(tuple(t) == (methods_id, "input") for d in ticks for t in d["targets"])
    assert all(d["trigger_mode"] == "always_last" for d in ticks)  # quick ticks end on the last state


def test_opening_a_study_shows_its_stored_top_slice_first(results):
    from anomaly.ui import callbacks as cb
    from anomaly.ui.app import on_upload

    df = wl.load_results(results)
    row = df[(df["kind"] == "nifti") & (df["status"] == "ok")].iloc[0]
    key = row["study_key"]
    top = wl.stored_top_slice(df, key)
    assert top == row["top_slice"]
    with cb._LOCK:
        cb._CACHE.clear()
    outs = list(on_upload(wl.open_study(str(results), key), None, "axial", METHODS, "auto", 0.5, 1.0, "both",
                          progress=lambda *a, **k: None, first_slice=top))
    assert len(outs) == 2 and outs[0][1]["value"] == top  # the stored top slice is scored and shown first
    final = cb.get_analysis(outs[-1][0])
    assert final.study_key == key and outs[-1][1]["value"] == top
    np.testing.assert_allclose(final.results["ae"].scores[top], row["ae__curve"][top], rtol=1e-6)


def test_opening_a_study_uses_its_stored_maps_without_rescoring(results, monkeypatch):
    """The worklist's open: stored maps and scores at the stored top slice, no model run; a study
    whose maps are gone is scored again (stored top slice first)."""
    import anomaly.analysis as analysis
    from anomaly.ui import callbacks as cb
    from anomaly.ui.app import on_upload

    df = wl.load_results(results)
    row = df[(df["kind"] == "nifti") & (df["status"] == "ok")].iloc[0]
    key = row["study_key"]
    stored = wl.stored_maps(str(results), df, key)
    assert stored[0].is_file() and stored[1] == row["content_hash"]
    with cb._LOCK:
        cb._CACHE.clear()
    with monkeypatch.context() as mp:
        mp.setattr(analysis, "score_prepared", lambda *a, **k: pytest.fail("a model ran"))
        outs = list(on_upload(wl.open_study(str(results), key), None, "axial", METHODS, "auto", 0.5, 1.0, "both",
                              progress=lambda *a, **k: None, first_slice=int(row["top_slice"]), stored=stored))
        assert len(outs) == 1 and outs[0][1]["value"] == row["top_slice"]
        assert "Stored batch results" in outs[0][3] and "not rescored" in outs[0][3]
        a = cb.get_analysis(outs[0][0])
        for m in METHODS:
            np.testing.assert_array_equal(a.results[m].scores, row[f"{m}__curve"])
        grid, table, _ = cb.render_view(outs[0][0], int(row["top_slice"]))
        assert grid.size[0] > 0 and [t["method"] for t in table] == cb.in_method_order(METHODS)
        # pressing Analyse with the same methods reuses it
        assert cb.cached_analysis(a.scan, METHODS)[0] == outs[0][0]
        # the Methods boxes are set to the stored methods (all 8 stayed ticked over 3 shown)
        assert sorted(wl.methods_ticks(outs[0][0])["value"]) == sorted(METHODS)
        assert wl.methods_ticks("no-such-key") == wl.gr.update()
    gone = (results / "elsewhere", row["content_hash"])
    with cb._LOCK:
        cb._CACHE.clear()
    outs = list(on_upload(wl.open_study(str(results), key), None, "axial", METHODS, "auto", 0.5, 1.0, "both",
                          progress=lambda *a, **k: None, first_slice=int(row["top_slice"]), stored=gone))
    assert len(outs) == 2 and "not used" in outs[0][3] and "not used" in outs[-1][3]
    np.testing.assert_array_equal(cb.get_analysis(outs[-1][0]).results["ae"].scores, row["ae__curve"])


def test_the_tab_reports_a_bad_folder_without_an_error_state(tmp_path, monkeypatch):
    """In the tab a refusal is a warning and a line in the summary (the API endpoint raises)."""
    warned = []
    monkeypatch.setattr(wl.gr, "Warning", lambda m, *a, **k: warned.append(m))
    out = wl.refusal_as_message(wl.on_open_folder, 4, 3, "Not opened")(str(tmp_path / "nothing"), None)
    assert len(out) == 4 and "does not exist" in out[-1] and out[-1].startswith("**Not opened:**")
    assert all(o == wl.gr.update() for o in out[:-1]) and warned and "does not exist" in warned[0]
    # the tab's own wiring clears the table and thumbnails: another folder's studies must not stay on screen
    empty = pd.DataFrame(columns=wl.WORKLIST_COLUMNS)
    out = wl.refusal_as_message(wl.on_open_folder, 4, 3, "Not opened", cleared={1: empty, 2: []})("/etc", None)
    assert out[1] is empty and out[2] == [] and out[0] == wl.gr.update() and "may open" in out[3]


def test_the_worklist_opens_results_only_under_its_roots(tmp_path, monkeypatch):
    """On a shared server the folder box must not open, nor tell apart, folders elsewhere on disk."""
    monkeypatch.delenv(wl.ROOTS_ENV)
    msgs = []
    for folder in ("/etc", "/nonexistent-folder", str(tmp_path)):
        with pytest.raises(wl.AnomalyError) as e:
            wl.load_results(folder)
        msgs.append(str(e.value).split("'", 2)[2])
    assert len(set(msgs)) == 1 and "is not a results folder this app may open" in str(e.value)
    monkeypatch.setenv(wl.ROOTS_ENV, str(tmp_path))
    with pytest.raises(wl.AnomalyError, match="does not exist"):
        wl.load_results(tmp_path / "nothing")
