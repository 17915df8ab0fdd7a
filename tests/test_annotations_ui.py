"""The Annotate panel: it builds with its API names; the live app (with the panel attached) is driven
through gradio_client and through headless Chromium (log in, flag, reload, the flag is still there).

The live tests start their own app (``annot_app``): ``app.py``'s ``build_app`` with the panel
added by ``anomaly.ui.annotate.attach`` (a no-op once ``build_app`` calls ``annotation_panel``
itself), a temporary annotation database and one annotator account.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import running_app

pytestmark = pytest.mark.timeout(600)  # the first live test also trains the tiny checkpoints
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VOL = ROOT / "assets" / "examples" / "synthetic_tumour_t1.nii.gz"
if not VOL.exists():
    VOL = ROOT / "assets" / "templates" / "itk_subject_t1_2x2x3mm.nii.gz"
API_NAMES = ("login", "add_flag", "list_flags", "edit_flag", "remove_flag", "undo_flag", "set_case_status",
             "review_queue", "next_case", "previous_case", "fp_summary", "mark_slice_reviewed")

LAUNCHER = """
import anomaly.ui.app as app
from anomaly.ui.annotate import attach
build = app.build_app
app.build_app = lambda: attach(build())
app.launch()
"""


def test_panel_builds_with_api_names(tmp_path, monkeypatch):
    import gradio as gr

    from anomaly.ui.annotate import PANEL_ID, annotation_panel, attach

    monkeypatch.setenv("ANOMALY_DATA_DIR", str(tmp_path))
    with gr.Blocks() as demo:
        key = gr.State(None)
        slider = gr.Slider(0, 10, step=1, label="Slice")
        plane = gr.Radio(["axial", "coronal", "sagittal"], value="axial", label="Plane")
        methods = gr.CheckboxGroup(["ae"], value=["ae"], label="Methods")
        threshold = gr.Slider(0.25, 3, value=1.0, label="Threshold")
        annotation_panel(key, slider, plane, methods, threshold)
    names = [d.get("api_name") for d in demo.get_config_file()["dependencies"]]
    for n in API_NAMES:
        assert names.count(n) == 1, n
    n_blocks = len(demo.blocks)
    attach(demo)  # already has the panel: nothing added
    assert len(demo.blocks) == n_blocks
    assert sum(getattr(b, "elem_id", None) == PANEL_ID for b in demo.blocks.values()) == 1


@pytest.fixture(scope="module")
def annot_app(tiny_checkpoints, tmp_path_factory):
    from anomaly.annotations.auth import hash_password

    data = tmp_path_factory.mktemp("annotdata")
    users = "alice:" + hash_password("s3cret", 1000) + ",bob:" + hash_password("hunter2", 1000)
    with running_app(tiny_checkpoints, data, ["-c", LAUNCHER], ANOMALY_ANNOTATIONS_DB=str(data / "ann.sqlite"),
                     ANOMALY_READ_ONLY="0", PYTHONPATH=str(ROOT), ANOMALY_USERS=users) as url:
        yield {"url": url, "db": data / "ann.sqlite"}


@pytest.mark.slow
def test_api_flag_edit_stale_remove_undo(annot_app):
    from gradio_client import Client, handle_file

    from anomaly.annotations.store import Store

    c = Client(annot_app["url"], verbose=False)
    api = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for n in API_NAMES:
        assert "/" + n in api, n
    with pytest.raises(Exception, match="wrong user name or password"):
        c.predict("alice", "nope", api_name="/login")
    out = c.predict("alice", "s3cret", api_name="/login")
    token = out[0]
    assert token and "." in token
    # analyse a scan in this client session (sets the session's analysis key)
    c.predict([handle_file(str(VOL))], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both", api_name="/analyse_view")
    r = c.predict(20, "zscore", "false_positive", "noise", "via API", "box", 10, 10, 30, 40, None, None, 1.0, token,
                  api_name="/add_flag")
    case_key, table = r[0], r[1]
    assert case_key.startswith("sk-")
    rows = table["data"]
    assert len(rows) == 1 and rows[0][4] == "false positive" and rows[0][6] == "via API" and rows[0][1] == 90
    fid = rows[0][-1]
    # two editors on version 1: the second edit is refused, nothing is overwritten
    e1 = c.predict(fid, 1, "false_positive", "artefact", "alice's edit", token, case_key, api_name="/edit_flag")
    assert "Saved" in e1[4] and e1[6] == "2"  # the version box is text (an empty number box read 0)
    tok_b = c.predict("bob", "hunter2", api_name="/login")[0]
    e2 = c.predict(fid, 1, "false_positive", "noise", "bob's edit", tok_b, case_key, api_name="/edit_flag")
    assert "Not saved" in e2[4] and "version 2" in e2[4]
    st = Store(annot_app["db"], read_only=True)
    f = st.get_flag(fid)
    assert f.note == "alice's edit" and f.version == 2 and f.reason == "artefact"
    c.predict(fid, 2, token, case_key, api_name="/remove_flag")
    assert st.get_flag(fid).deleted
    c.predict(fid, token, case_key, "3", api_name="/undo_flag")  # the version it sees (edit 2, removal 3)
    assert not st.get_flag(fid).deleted
    listed = c.predict(case_key, api_name="/list_flags")
    assert [r[-1] for r in listed["data"]] == [fid]
    # writing without a token is refused
    with pytest.raises(Exception):
        c.predict(20, "zscore", "false_positive", "noise", "", "whole slice", None, None, None, None, None, None, 1.0,
                  None, api_name="/add_flag")
    assert st.count_flags() == 1
    # a refused file empties the API session's scan: a flag sent next is refused, not filed on the scan before
    bad = annot_app["db"].parent / "not_a_scan.png"
    bad.write_bytes(b"this is no image")
    with pytest.raises(Exception, match="(?i)not|cannot|unreadable"):
        c.predict([handle_file(str(bad))], None, "axial", ["zscore"], "auto", 0.5, 1.0, "both", api_name="/analyse_view")
    with pytest.raises(Exception):
        c.predict(20, "zscore", "false_positive", "noise", "after a refused file", "whole slice", None, None, None, None,
                  None, None, 1.0, token, api_name="/add_flag")
    assert st.count_flags() == 1
    # a series chosen by a value the page never listed to this client (a UID from a script, or a key): the
    # loader decides, Gradio's own choice check (which refused it with a traceback quoting it) is off
    from tests.test_io_dicom import _two_series_zip

    zpath, first_uid, second_uid = _two_series_zip(annot_app["db"].parent / "two")
    c2 = Client(annot_app["url"], verbose=False)
    out = c2.predict([handle_file(str(zpath))], second_uid, "axial", ["zscore"], "auto", 0.5, 1.0, "both",
                     api_name="/analyse_view")
    assert any("series chosen from 2 series" in str(o) for o in out)
    # refusals are the user's messages, not server faults: no traceback in the server's log for any of them
    log = (annot_app["db"].parent / "app.log").read_text()
    assert "Traceback" not in log and "gradio.exceptions.Error" not in log, log[-2000:]


@pytest.mark.slow
def test_browser_login_flag_reload_and_find_it(annot_app):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is required for the browser test")
    from playwright.sync_api import sync_playwright

    from anomaly.annotations.store import Store

    artifacts = ROOT / "runs" / "screenshots"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = b.new_page(viewport={"width": 1500, "height": 2400})
        page.goto(annot_app["url"], wait_until="load")
        page.get_by_text("Annotate: flag false positives").click()
        page.wait_for_selector("text=Log in to annotate", timeout=60_000)
        assert page.get_by_role("button", name="Add flag").is_disabled()
        page.get_by_label("Annotator").fill("alice")
        page.get_by_label("Password").fill("s3cret")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_selector("text=Logged in as", timeout=60_000)
        page.locator("input[type=file]").first.set_input_files(str(VOL))
        page.wait_for_selector("text=percentile vs healthy", timeout=180_000)
        page.wait_for_function("() => document.querySelector('#anomaly-annotate img') !== null", timeout=60_000)
        # a point region with no point clicked: refused with a message; nothing turns into an error
        # state, the (empty) point fields stay empty, and the note typed so far is kept
        assert page.get_by_label("point row", exact=True).input_value() == ""
        page.get_by_label("Note (no patient identifiers)").fill("browser flag")
        page.get_by_role("button", name="Add flag").click()
        page.wait_for_selector("#anomaly-annotate >> text=Not added >> visible=true", timeout=60_000)
        assert "point (row, col)" in page.inner_text("#anomaly-annotate")
        assert page.locator("#anomaly-annotate .error").count() == 0
        assert page.get_by_label("Note (no patient identifiers)").input_value() == "browser flag"
        page.get_by_label("whole slice").check()
        page.get_by_role("button", name="Add flag").click()
        page.wait_for_selector("text=Added false positive", timeout=60_000)
        page.screenshot(path=str(artifacts / "annotate_flagged.png"), full_page=True)
        flags = Store(annot_app["db"], read_only=True).list_flags()
        mine = [f for f in flags if f.note == "browser flag"]
        assert len(mine) == 1 and mine[0].reviewer == "alice"
        # reload: still logged in (session token kept by the browser), the flag is in the store's queue
        page.reload(wait_until="load")
        page.get_by_text("Annotate: flag false positives").click()
        page.wait_for_selector("text=Logged in as", timeout=60_000)
        page.get_by_text("Review queue", exact=True).click()
        page.locator(f"#anomaly-annotate >> text={mine[0].study_key} >> visible=true").first.wait_for(timeout=60_000)
        for _ in range(5):  # walk the queue to that case
            page.get_by_role("button", name="Next case").click()
            time.sleep(1.5)
            if page.locator("#anomaly-annotate >> text=browser flag >> visible=true").count():
                break
        page.locator("#anomaly-annotate >> text=browser flag >> visible=true").first.wait_for(timeout=30_000)
        page.locator("#anomaly-annotate >> text=browser flag >> visible=true").first.click()
        page.wait_for_function(f"() => [...document.querySelectorAll('#anomaly-annotate textarea, #anomaly-annotate input')]"
                               f".some(e => e.value === '{mine[0].id}')", timeout=30_000)
        page.screenshot(path=str(artifacts / "annotate_after_reload.png"), full_page=True)
        b.close()
