"""The "Annotate" panel of the review app: flag false positives / missed lesions / findings, edit,
remove and undo them, walk the review queue and see false positives per method.

Call ``annotation_panel(key, slider, plane, methods, threshold)`` inside ``build_app``'s
``with gr.Blocks()`` (after the viewer's events are wired, so that the optional ``view=`` can
re-render the viewer after a jump). Viewing needs no login; annotating does (in-page login, a
signed session token kept in the browser). The callbacks are thin wrappers around
``anomaly.annotations.service`` (tested without the UI); every event that matters has an
``api_name``.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from anomaly.annotations import InvalidRegionError
from anomaly.annotations import service as svc
from anomaly.annotations.store import LABELS, REASONS, STATUSES, StaleEditError
from anomaly.errors import AnomalyError
from anomaly.ui import refusal_as_message

log = logging.getLogger(__name__)

LABEL_CHOICES = [("false positive", "false_positive"), ("missed lesion", "missed_lesion"),
                 ("confirmed finding", "confirmed_finding")]
PANEL_ID = "anomaly-annotate"
REASON_CHOICES = list(REASONS) + [svc.NO_REASON]
FLAG_COLUMNS = ["slice", "of", "plane", "method", "label", "reason", "note", "region", "by", "version", "updated (UTC)", "id"]
QUEUE_COLUMNS = ["study_key", "status", "flags", "false positives", "methods", "reviewed slices", "series",
                 "updated (UTC)"]
HELP = """
**How to flag.** Pick the method and what the region is (**false positive** with its reason, **missed lesion**,
or **confirmed finding**), then the region: *component at point* takes the connected region of the method's map
above the current threshold at (row, col); *box* takes rows row0..row1-1 and columns col0..col1-1; *whole slice*
takes the slice. Click the preview to set the point (or, in box mode, two opposite corners). Yellow: the method's
region above threshold; red / green / blue: existing false positives / missed lesions / confirmed findings; cyan:
the region you are about to add. Every change is kept with its history: *Remove* can be undone, and an edit made
on an outdated version of a flag is refused (reload and redo it), never silently overwritten.
"""


def _df(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=cols)


def _coords(*values):
    """Pixel coordinates from the text fields: blank -> None (not set), else a whole number.

    Text fields, not number fields: Gradio's number field shows and sends 0 when empty, which
    would pick the region at the image corner (0, 0) before any click."""
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidRegionError(f"{v!r} is not a pixel coordinate (a whole number)") from None
        if not f.is_integer():
            raise InvalidRegionError(f"{v!r} is not a pixel coordinate (a whole number)")
        out.append(int(f))
    return out


def _err(e: Exception):
    raise gr.Error(str(e), duration=None, print_exception=False) from None


def _case_of(key, fallback=None):
    """The study key of the loaded analysis, else ``fallback``."""
    try:
        return svc._analysis(key).study_key
    except AnomalyError:
        return fallback or None


# ----------------------------------------------------------------------------- callbacks


def _access_outputs(token, n_buttons: int):
    st = svc.access_state(token)
    can = bool(st["user"])
    show_login = not st["read_only"] and st["enabled"]
    return [st["message"], gr.update(visible=show_login and not can), gr.update(visible=show_login and can)] + \
        [gr.update(interactive=can)] * n_buttons


def on_login(name, password, n_buttons: int):
    try:
        token = svc.login(name, password)
    except AnomalyError as e:
        _err(e)
    return [token, ""] + _access_outputs(token, n_buttons)


def on_logout(n_buttons: int):
    return [None] + _access_outputs(None, n_buttons)


# the flag selection emptied (a new scan: the flag selected before may be another case's, and Save,
# Remove or Undo would change it unseen)
NO_SELECTION = ["", "", None, None, ""]


def _case_outputs(study_key):
    info = svc.case_info(study_key)
    return [study_key or "", _df(svc.flag_table(study_key), FLAG_COLUMNS), info["text"],
            gr.update(value=info["status"]), _seen(study_key, info)]


def _seen(study_key, info: dict):
    """The ``case_seen`` state: which case was shown, at which version (a status change is checked
    against it only for that case)."""
    return [study_key, info.get("version")] if study_key else None


def on_scan(key, case_key, methods, threshold):
    """A scan was loaded (or re-analysed in another plane): its case, method choices, flags, preview,
    and no flag selected, no message left from the previous scan.

    The preview shows the slice the viewer opens on. The slider is not an input here: when a scan
    with fewer slices replaces one with more, this event can see the old slider value against the
    new maximum, which Gradio refuses ("Value 24 is greater than maximum value 1") before any code
    runs, leaving the panel on the previous case."""
    try:
        a = svc._analysis(key)
    except AnomalyError:
        return [gr.update(), gr.update()] + _case_outputs(case_key or None)[1:] + [_no_preview()] + NO_SELECTION + ["", ""]
    names = list(a.results)
    chosen = next((m for m in (methods or []) if m in names), names[0] if names else None)
    idx = a.most_anomalous_slice()
    try:
        prev = _preview_update(key, idx, svc.preview(key, idx, chosen, threshold))
    except AnomalyError:
        prev = _no_preview()
    return [gr.update(choices=names, value=chosen)] + _case_outputs(a.study_key) + [prev] + NO_SELECTION + ["", ""]


PREVIEW_LABEL = "This slice (click: point / box corners)"


def _no_preview():
    """The preview emptied, with its plain title (no scan, or nothing to show)."""
    return gr.update(value=None, label=PREVIEW_LABEL)


def _preview_update(key, index, img):
    """The preview image, titled with the slice it shows ("slice 31 of 80, axial")."""
    try:
        a = svc._analysis(key)
        label = f"Slice {int(index)} of {a.n_slices}, {a.plane} (click: point / box corners)"
    except (AnomalyError, TypeError, ValueError):
        label = PREVIEW_LABEL
    return gr.update(value=img, label=label)


def on_preview(key, index, method, threshold, mode, r0, c0, r1, c1, pr, pc):
    """The preview never fails the page: no scan, a bad point or a bad box just show less."""
    try:
        r0, c0, r1, c1, pr, pc = _coords(r0, c0, r1, c1, pr, pc)
        return _preview_update(key, index, svc.preview(key, index, method, threshold, mode, [r0, c0, r1, c1],
                                                       [pr, pc]))
    except AnomalyError:
        return _no_preview()
    except Exception:  # noqa: BLE001
        log.exception("annotation preview failed")
        return gr.update()


def on_preview_click(key, index, mode, corner, r0, c0, r1, c1, evt: gr.SelectData):
    """Click on the preview: the point (component mode) or the next box corner (box mode)."""
    try:
        a = svc._analysis(key)
        shape = svc.slice_shape(a, int(index))
    except (AnomalyError, TypeError, ValueError):
        return [gr.update()] * 7
    row, col = svc.preview_pixel(float(evt.index[1]), float(evt.index[0]), shape, a.pixel_aspect())
    if mode == "box":
        if not corner:
            return [row, col, "", "", gr.update(), gr.update(), 1]
        try:
            p0, q0 = _coords(r0, c0)
        except AnomalyError:
            p0 = q0 = None
        a0, b0 = (p0 if p0 is not None else row), (q0 if q0 is not None else col)
        lo_r, hi_r = sorted((int(a0), row))
        lo_c, hi_c = sorted((int(b0), col))
        return [lo_r, lo_c, hi_r + 1, hi_c + 1, gr.update(), gr.update(), 0]
    return [gr.update()] * 4 + [row, col, corner]


def on_add(key, index, method, label, reason, note, mode, r0, c0, r1, c1, pr, pc, threshold, token):
    """API ``add_flag``: returns the case's flag list and a message."""
    try:
        r0, c0, r1, c1, pr, pc = _coords(r0, c0, r1, c1, pr, pc)
        f = svc.add_flag(key, index, method, label, reason, note, mode, [r0, c0, r1, c1], [pr, pc], threshold, token)
    except AnomalyError as e:
        _err(e)
    msg = f"Added {f.label.replace('_', ' ')} on slice {f.slice_index} ({f.method}), flag `{f.id[:8]}`."
    gr.Info(msg.replace("`", ""))  # a toast shows no markdown
    prev = on_preview(key, index, method, threshold, None, r0, c0, r1, c1, pr, pc)
    return _case_outputs(f.study_key) + [msg, prev, ""]


def on_reviewed(key, index, token):
    try:
        new = svc.mark_slice_reviewed(key, index, token)
        sk = svc._analysis(key).study_key
    except AnomalyError as e:
        _err(e)
    msg = f"Slice {int(index)} kept as reviewed." if new else f"Slice {int(index)} was already kept as reviewed."
    return _case_outputs(sk) + [msg]


def _view_if_loaded(fn, n_out: int):
    """The viewer's re-render, only when a scan is loaded (a flag of a queued case has no view)."""

    def run(key, *args):
        try:
            svc._analysis(key)
        except AnomalyError:
            return [gr.update()] * n_out if n_out > 1 else gr.update()
        return fn(key, *args)

    return run


def on_select_flag(rows, key, evt: gr.SelectData):
    """A click in the flag list: select that flag and jump to its slice (if it is on the loaded scan)."""
    try:
        r = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
        fid = str(rows.iloc[r]["id"])
        f = svc.get_flag(fid)
    except Exception:  # noqa: BLE001 - a click outside the data
        return [gr.update()] * 6
    jump = gr.update()
    try:
        a = svc._analysis(key)
        if a.study_key == f.study_key and a.plane == f.plane and a.n_slices == f.n_slices:
            jump = gr.update(value=f.slice_index)
        elif a.study_key == f.study_key and a.plane != f.plane:
            gr.Info(f"this flag is on the {f.plane} plane: switch the plane to see it")
        elif a.study_key == f.study_key:  # the same study loaded as one file or another series of it
            gr.Info(f"this flag was drawn on {f.n_slices} slices of this study; the loaded scan has {a.n_slices}: "
                    "load the same series to see it")
    except AnomalyError:
        pass
    return [f.id, f.version, f.label, f.reason or svc.NO_REASON, f.note, jump]


def _selected(f):
    return [f.id, f.version, f.label, f.reason or svc.NO_REASON, f.note]


def on_edit(flag_id, version, label, reason, note, token, case_key):
    """API ``edit_flag``: a stale version is refused (message + the flag's current values)."""
    try:
        f = svc.edit_flag(flag_id, version, label, reason, note, token)
    except StaleEditError as e:
        gr.Warning(str(e))
        cur = e.current or svc.get_flag(flag_id)
        return _case_outputs(cur.study_key) + [f"**Not saved.** {e}"] + _selected(cur)
    except AnomalyError as e:
        _err(e)
    same = version not in (None, "") and float(version) == f.version
    msg = (f"Nothing to save: flag `{f.id[:8]}` already reads so (version {f.version})." if same
           else f"Saved flag `{f.id[:8]}` (version {f.version}).")
    return _case_outputs(f.study_key) + [msg] + _selected(f)


def on_remove(flag_id, version, token, case_key):
    try:
        f = svc.remove_flag(flag_id, version, token)
    except StaleEditError as e:
        gr.Warning(str(e))
        return _case_outputs(case_key or None) + [f"**Not removed.** {e}"] + [gr.update()] * 5
    except AnomalyError as e:
        _err(e)
    return _case_outputs(f.study_key) + [f"Removed flag `{f.id[:8]}`: *Undo* restores it."] + _selected(f)


def on_undo(flag_id, token, case_key, version=None):
    """API ``undo_flag``: the selected flag at the version shown (a flag changed since is refused, as
    an edit is), else my last change in the case (refused if someone changed that flag after me)."""
    try:
        f = svc.undo(flag_id or None, case_key or None, token, version)
    except StaleEditError as e:
        gr.Warning(str(e))
        cur = e.current
        return _case_outputs(case_key or (cur.study_key if cur else None)) + [f"**Not undone.** {e}"] + \
            (_selected(cur) if cur is not None and flag_id else [gr.update()] * 5)
    except AnomalyError as e:
        _err(e)
    state = "removed" if f.deleted else f"in the list as {f.label.replace('_', ' ')}"
    return _case_outputs(f.study_key) + [f"Undone: flag `{f.id[:8]}` is now {state} (version {f.version})."] + \
        _selected(f)


def on_list(case_key, key):
    """API ``list_flags``: the flags of a study key (or of the loaded scan)."""
    sk = case_key or _case_of(key)
    return _df(svc.flag_table(sk), FLAG_COLUMNS)


def on_status(case_key, status, token, seen=None):
    """API ``set_case_status`` (the page also sends the case version it shows, session state: a status set
    by someone since is refused and the case shown afresh)."""
    version = seen[1] if isinstance(seen, (list, tuple)) and len(seen) == 2 and seen[0] == case_key else None
    try:
        info = svc.set_case_status(case_key, status, token, version)
    except StaleEditError as e:
        gr.Warning(str(e))
        info = svc.case_info(case_key)
        return [f"**Not set.** {e}\n\n{info['text']}", gr.update(value=info["status"]), _seen(case_key, info)]
    except AnomalyError as e:
        _err(e)
    return [info["text"], gr.update(value=info["status"]), _seen(case_key, info)]


def on_queue(method, status):
    return _df(svc.review_queue(method, status), QUEUE_COLUMNS)


def on_step(case_key, method, status, step: int):
    sk = svc.queue_step(case_key or None, step, method, status)
    if sk is None:
        gr.Info("the review queue is empty (with these filters)")
        return [gr.update()] * 5 + [_df([], QUEUE_COLUMNS)]
    return _case_outputs(sk) + [on_queue(method, status)]


def on_summary(scope, case_key):
    rows = svc.fp_summary(case_key or None if scope == "this case" else None)
    cols = ["method", *REASONS, "false positives", "confirmed findings", "missed lesions"]
    return _df(rows, cols), svc.fp_figure(rows)


def on_export_seg(key):
    """API ``export_seg``: the loaded DICOM scan's confirmed findings as a DICOM SEG file."""
    try:
        return str(svc.export_seg(key))
    except AnomalyError as e:
        _err(e)


def on_load(token, key, method_filter, status_filter, n_buttons: int):
    return _access_outputs(token, n_buttons) + [on_queue(method_filter, status_filter)]


# ----------------------------------------------------------------------------- layout


def annotation_panel(key_state, slider, plane, methods, threshold, view=None) -> None:
    """Builds the Annotate panel inside the current ``gr.Blocks`` context.

    ``key_state``: the analysis key (gr.State); ``slider``: the slice slider; ``plane``: the plane
    radio; ``methods``: the methods checkbox group; ``threshold``: the threshold slider. Optional
    ``view=(fn, inputs, outputs)`` re-renders the viewer after a jump to a flag's slice."""
    from gradio.context import Context

    root = Context.root_block
    from anomaly.annotations.auth import browser_state_secret

    # a stable key: the stored login survives an app restart (a random one logged everyone out)
    token = gr.BrowserState(None, storage_key="anomaly-annotator-session", secret=browser_state_secret())
    corner = gr.State(0)
    with gr.Accordion("Annotate: flag false positives, missed lesions and findings", open=False, elem_id=PANEL_ID):
        access_md = gr.Markdown(svc.access_state(None)["message"])
        with gr.Row(visible=False) as login_row:
            user_tb = gr.Textbox(label="Annotator", scale=2)
            pw_tb = gr.Textbox(label="Password", type="password", scale=2)
            login_btn = gr.Button("Log in", scale=1)
        with gr.Row(visible=False) as logout_row:
            logout_btn = gr.Button("Log out", size="sm")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                method_dd = gr.Dropdown(label="Method", choices=[], allow_custom_value=True)
                label_dd = gr.Dropdown(LABEL_CHOICES, value="false_positive", label="Label")
                reason_dd = gr.Dropdown(REASON_CHOICES, value="normal anatomy",
                                        label="Reason (for a false positive)")
                note_tb = gr.Textbox(label="Note (no patient identifiers)", lines=2)
                mode_rb = gr.Radio(list(svc.REGION_MODES), value="component at point", label="Region")
                with gr.Row():
                    pr = gr.Textbox("", label="point row", placeholder="click", min_width=80)
                    pc = gr.Textbox("", label="point col", placeholder="click", min_width=80)
                with gr.Row():
                    r0 = gr.Textbox("", label="row0", placeholder="click", min_width=60)
                    c0 = gr.Textbox("", label="col0", placeholder="click", min_width=60)
                    r1 = gr.Textbox("", label="row1", placeholder="click", min_width=60)
                    c1 = gr.Textbox("", label="col1", placeholder="click", min_width=60)
                with gr.Row():
                    add_btn = gr.Button("Add flag", variant="primary", interactive=False)
                    reviewed_btn = gr.Button("Slice reviewed: nothing to flag", interactive=False)
                    api_add = gr.Button("add flag (API)", visible=False)
                msg_md = gr.Markdown()
            with gr.Column(scale=1, min_width=320):
                preview_img = gr.Image(label=PREVIEW_LABEL, type="numpy", format="png",
                                       interactive=False, height=420)
                with gr.Accordion("How to flag", open=False):
                    gr.Markdown(HELP)
        flags_df = gr.Dataframe(value=_df([], FLAG_COLUMNS), label="Flags of this case (click one to select it and "
                                "jump to its slice)", interactive=False, wrap=True)
        with gr.Row():
            sel_id = gr.Textbox(label="Selected flag id", interactive=False, scale=3)
            # a text box: an empty number box shows 0 before any flag is selected
            sel_version = gr.Textbox(label="its version", interactive=False, scale=1)
            edit_label = gr.Dropdown(LABEL_CHOICES, label="Label", scale=2)
            edit_reason = gr.Dropdown(REASON_CHOICES, label="Reason", scale=2)
            edit_note = gr.Textbox(label="Note", scale=3)
        with gr.Row():
            save_btn = gr.Button("Save edit", interactive=False)
            remove_btn = gr.Button("Remove", variant="stop", interactive=False)
            undo_btn = gr.Button("Undo (selected flag, else my last change here)", interactive=False)
            list_btn = gr.Button("Reload list")
        with gr.Accordion("Review queue", open=False):
            case_key = gr.Textbox(label="Case (study key)", interactive=False)
            case_seen = gr.State(None)  # the case version shown: a status change is checked against it
            case_md = gr.Markdown()
            with gr.Row():
                status_rb = gr.Radio(list(STATUSES), label="Review status of this case")
                status_btn = gr.Button("Set status", interactive=False)
            with gr.Row():
                qmethod = gr.Dropdown(["(any)"], value="(any)", label="Only cases with flags of method",
                                      allow_custom_value=True)
                qstatus = gr.Dropdown(["(any)", *STATUSES], value="(any)", label="Status")
                prev_btn = gr.Button("Previous case")
                next_btn = gr.Button("Next case")
                queue_btn = gr.Button("Reload queue")
            queue_df = gr.Dataframe(value=_df([], QUEUE_COLUMNS), label="Cases in the store", interactive=False)
            gr.Markdown("The store keeps only the reviewed slices of a case, not the scan: load its scan to view it.")
        with gr.Accordion("False positives per method", open=False):
            scope = gr.Radio(["all cases", "this case"], value="all cases", label="Scope")
            fp_df = gr.Dataframe(label="False positives by reason", interactive=False)
            fp_plot = gr.Plot(label="False positives per method")
            summary_btn = gr.Button("Refresh summary")
        with gr.Accordion("Export", open=False):
            gr.Markdown("Confirmed findings of the loaded DICOM scan as a DICOM SEG on its source series "
                        "(patient name and ID replaced by the study key). CSV/JSON/NIfTI exports: "
                        "`python -m anomaly.annotations --help`.")
            seg_btn = gr.Button("DICOM SEG of confirmed findings")
            seg_file = gr.File(label="DICOM SEG", interactive=False)
            seg_msg = gr.Markdown()  # why no file came

    buttons = [add_btn, reviewed_btn, save_btn, remove_btn, undo_btn, status_btn]
    nb = len(buttons)
    access_out = [access_md, login_row, logout_row, *buttons]
    case_out = [case_key, flags_df, case_md, status_rb, case_seen]
    selected_out = [sel_id, sel_version, edit_label, edit_reason, edit_note]
    region_in = [r0, c0, r1, c1, pr, pc]
    preview_in = [key_state, slider, method_dd, threshold, mode_rb, *region_in]

    if root is not None:
        root.load(lambda t, k, m, s: on_load(t, k, m, s, nb), [token, key_state, qmethod, qstatus],
                  access_out + [queue_df], api_visibility="private")
    # on the page a refused login is a warning and a line in the panel's message, the boxes stay usable
    # (a raised error laid an "Error" overlay over them); the API endpoint keeps raising
    login_out = [token, pw_tb, *access_out]
    login_page = refusal_as_message(lambda n, p: on_login(n, p, nb), len(login_out), 2, "Not logged in",
                                    cleared={1: ""})
    login_btn.click(login_page, [user_tb, pw_tb], login_out, api_visibility="private")
    pw_tb.submit(login_page, [user_tb, pw_tb], login_out, api_visibility="private")
    api_login = gr.Button("log in (API)", visible=False)
    api_login.click(lambda n, p: on_login(n, p, nb), [user_tb, pw_tb], login_out, api_name="login")
    logout_btn.click(lambda: on_logout(nb), None, [token, *access_out], api_visibility="private")

    key_state.change(on_scan, [key_state, case_key, methods, threshold],
                     [method_dd, *case_out, preview_img, *selected_out, msg_md, seg_msg], api_visibility="private").then(
        lambda k, m: gr.update(choices=["(any)", *svc.queue_methods(k)], value=m), [key_state, qmethod], [qmethod],
        api_visibility="private")

    for ev in (slider.change, method_dd.change, mode_rb.change):
        ev(on_preview, preview_in, [preview_img], api_visibility="private", trigger_mode="always_last",
           show_progress="hidden")
    threshold.release(on_preview, preview_in, [preview_img], api_visibility="private", show_progress="hidden")
    for comp in region_in:
        comp.submit(on_preview, preview_in, [preview_img], api_visibility="private", show_progress="hidden")
    preview_img.select(on_preview_click, [key_state, slider, mode_rb, corner, r0, c0, r1, c1],
                       [r0, c0, r1, c1, pr, pc, corner], api_visibility="private").then(
        on_preview, preview_in, [preview_img], api_visibility="private", show_progress="hidden")
    label_dd.change(lambda lab: gr.update(value="normal anatomy" if lab == "false_positive" else svc.NO_REASON),
                    [label_dd], [reason_dd], api_visibility="private")

    summary_out = [fp_df, fp_plot]
    add_in = [key_state, slider, method_dd, label_dd, reason_dd, note_tb, mode_rb, *region_in, threshold, token]
    add_out = [*case_out, msg_md, preview_img, note_tb]
    # the button: a refusal is a message beside it (the note typed so far is kept)
    add_ev = add_btn.click(refusal_as_message(on_add, len(add_out), add_out.index(msg_md), "Not added"), add_in,
                           add_out, api_visibility="private")
    add_ev.then(on_summary, [scope, case_key], summary_out, api_visibility="private").then(
        on_queue, [qmethod, qstatus], [queue_df], api_visibility="private")  # the queue's counts follow
    # the API endpoint raises its errors (a typed failure for gradio_client callers)
    api_add.click(on_add, add_in, add_out, api_name="add_flag")
    # the page's buttons: a refusal is a message in the panel (a raised error put "Error" badges on the
    # flag table and the edit boxes until the next reload); the hidden API buttons keep raising
    reviewed_out = [*case_out, msg_md]
    reviewed_btn.click(refusal_as_message(on_reviewed, len(reviewed_out), len(case_out), "Not kept"),
                       [key_state, slider, token], reviewed_out, api_visibility="private")
    gr.Button("mark slice reviewed (API)", visible=False).click(on_reviewed, [key_state, slider, token], reviewed_out,
                                                                api_name="mark_slice_reviewed")
    list_btn.click(on_list, [case_key, key_state], [flags_df], api_name="list_flags")

    sel = flags_df.select(on_select_flag, [flags_df, key_state], [*selected_out, slider], api_visibility="private")
    if view is not None:
        fn, v_in, v_out = view
        sel.then(_view_if_loaded(fn, len(v_out)), v_in, v_out, api_visibility="private")
    edit_out = [*case_out, msg_md, *selected_out]
    for btn, fn, ins, api, prefix in (
            (save_btn, on_edit, [sel_id, sel_version, edit_label, edit_reason, edit_note, token, case_key], "edit_flag",
             "Not saved"),
            (remove_btn, on_remove, [sel_id, sel_version, token, case_key], "remove_flag", "Not removed"),
            (undo_btn, on_undo, [sel_id, token, case_key, sel_version], "undo_flag", "Not undone")):
        page = btn.click(refusal_as_message(fn, len(edit_out), len(case_out), prefix), ins, edit_out,
                         api_visibility="private")
        api_ev = gr.Button(f"{api} (API)", visible=False).click(fn, ins, edit_out, api_name=api)
        for ev in (page, api_ev):
            ev.then(on_preview, preview_in, [preview_img], api_visibility="private", show_progress="hidden").then(
                on_summary, [scope, case_key], summary_out, api_visibility="private").then(
                on_queue, [qmethod, qstatus], [queue_df], api_visibility="private")

    status_btn.click(on_status, [case_key, status_rb, token, case_seen], [case_md, status_rb, case_seen],
                     api_name="set_case_status").then(on_queue, [qmethod, qstatus], [queue_df], api_visibility="private")
    for c in (qmethod, qstatus):
        c.change(on_queue, [qmethod, qstatus], [queue_df], api_visibility="private")
    queue_btn.click(on_queue, [qmethod, qstatus], [queue_df], api_name="review_queue")
    prev_btn.click(lambda k, m, s: on_step(k, m, s, -1), [case_key, qmethod, qstatus], [*case_out, queue_df],
                   api_name="previous_case")
    next_btn.click(lambda k, m, s: on_step(k, m, s, 1), [case_key, qmethod, qstatus], [*case_out, queue_df],
                   api_name="next_case")
    summary_btn.click(on_summary, [scope, case_key], summary_out, api_name="fp_summary")
    seg_btn.click(refusal_as_message(lambda k: [on_export_seg(k), ""], 2, 1, "No DICOM SEG"), [key_state],
                  [seg_file, seg_msg], api_visibility="private")
    gr.Button("export SEG (API)", visible=False).click(on_export_seg, [key_state], [seg_file], api_name="export_seg")
    scope.change(on_summary, [scope, case_key], summary_out, api_visibility="private")


def attach(demo: gr.Blocks, view="auto") -> gr.Blocks:
    """Adds the panel to an already built app (a no-op if it has one), finding the viewer's components
    by their labels. For tests, and to run the panel before ``build_app`` calls ``annotation_panel``.
    ``view="auto"`` wires the re-render after a jump to the app's ``on_view`` when it finds its parts."""
    comps = list(demo.blocks.values())
    if any(getattr(c, "elem_id", None) == PANEL_ID for c in comps):
        return demo

    def find(cls, label=None):
        for c in comps:
            if isinstance(c, cls) and (label is None or str(getattr(c, "label", "") or "").startswith(label)):
                return c
        raise LookupError(f"no {cls.__name__} {label or ''} in the app")

    key = next(c for c in comps if type(c) is gr.State)
    slider, plane = find(gr.Slider, "Slice"), find(gr.Radio, "Plane")
    methods, threshold = find(gr.CheckboxGroup, "Methods"), find(gr.Slider, "Threshold")
    if view == "auto":
        try:
            from anomaly.ui.app import on_view

            view = (on_view, [key, slider, find(gr.Dropdown, "Window"), find(gr.Slider, "Overlay opacity"),
                              threshold, find(gr.Radio, "Overlay"), methods, find(gr.Checkbox, "Extra maps"),
                              find(gr.Dropdown, "Compare slider"), find(gr.Slider, "Zoom")],
                    [find(gr.Image, "input | pseudo-healthy"), find(gr.Dataframe, "Scores at this slice"),
                     find(gr.ImageSlider), find(gr.Plot, "Per-slice score")])
        except (LookupError, ImportError):
            view = None
    with demo:
        annotation_panel(key, slider, plane, methods, threshold, view=view)
    return demo


__all__ = ["annotation_panel", "attach", "LABELS"]
