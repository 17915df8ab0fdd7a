"""Layout of the review app (``build_app`` returns the Blocks; ``launch`` only in app.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr
import pandas as pd

from anomaly.errors import AnomalyError, MultipleSeriesError, StaleResultsError
from anomaly.ui import LOAD_QUEUE
from anomaly.ui import callbacks as cb
from anomaly.ui.annotate import annotation_panel
from anomaly.ui.components import ClampedSlider
from anomaly.ui.worklist import build_worklist
from anomaly.windowing import DATA_PRESETS, PRESETS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"
MAX_FILE_SIZE = "512mb"
# (label, value): the data windows, then the Hounsfield presets (windowing.PRESETS), which say they are for CT
WINDOW_CHOICES = [(p, p) for p in DATA_PRESETS] + [(p if "ct" in p else f"{p} (CT)", p) for p in PRESETS]

NOTICE = (
    "**Research tool, not for diagnosis.** Do not upload identifiable patient data: uploads are deleted "
    "from the server after an hour, and patient names/IDs are never shown or stored."
)

HOW_TO_READ = """
* Each row is one method. **Pseudo-healthy** is the method's reconstruction of the scan as if it were healthy;
  the **residual map** is how far the scan departs from it, after the same post-processing for every method
  (brain mask, 5x5 median filter).
* Colours are **calibrated against healthy**: 1.0 on the colour bar is the method's threshold (the 99.5th
  percentile of its maps on healthy validation slices), on one shared scale for all methods. They are *not*
  rescaled per image: per-image min-max makes every normal scan look anomalous.
* The **percentile** in the score table says how a slice's score ranks among healthy validation slices
  (99 = higher than 99% of healthy slices); *anomalous* means at or above the 95th percentile; *not scored*: the slice has too little brain to score (a section under a quarter of the scan's largest).
* The **decision** comes from the slice score (the mean of the top 1% of the map, compared with healthy
  slices that fill as much of their brain box), not from the area above threshold: a map can outline a
  small region while the slice stays *normal*, and a diffuse rise can make a slice *anomalous*. Read both.
* Score table columns: **score** = the slice score relative to healthy slices of similar brain fill
  (0 = their median, 1 = their 90th percentile, a scale only: the decision is the **percentile**, 95th and
  above); **raw score** = the mean of the top 1% of the map, in the method's own units (not comparable across
  methods); **area above threshold** = the map's area at or above the threshold on this slice; **scored** =
  false where the slice has too little brain to score (a section under a quarter of the scan's largest). No
  whole-scan score is shown: the highest slice score of a scan (the API's volume score) comes from healthy
  slices as often as from lesions here, and tells healthy and lesion scans apart hardly better than chance
  (README, "Whole volumes").
* **Window**: a preset, or type a level and width (e.g. `L40 W80`, in the scan's own units). The input panel's
  title gives the slice's position in the patient frame (e.g. `S 12.0 mm`) and a DICOM slice's instance number.
* The **compare slider** (below the tables) wipes between the input as the model sees it (brain only, on the
  model's intensity scale) and the pseudo-healthy image of the method picked above it.
* **Zoom** magnifies every panel and the compare slider together (one window of the slice for all); click a
  point on any panel, or a finding, to centre it there. Switching the plane opens the slice through that
  point; when none was chosen, through the strongest point that the first shown method flagging this slice
  marks (so the lesion in view stays in view), else through the middle of the slice.
* **Findings** are connected regions above the threshold in 3D (volume, bounding-box extent in mm, slice
  range, peak in multiples of the threshold), all methods in one list: those on slices with a large brain
  section first, then those at the skull base, vertex or brain edge (**brain section** "small", where healthy
  anatomy gives every method its largest residuals); in each group method by method in the Methods' order
  (best validation first: on validation lesion volumes this put a lesion finding first more than twice as
  often as the strongest peak over all methods did), each method's strongest peak first; **also flagged by**
  names the other shown methods whose maps are above their threshold somewhere in the same region ("none":
  the finding rests on one method). Click one to jump to it. DDAD's refined map saturates at about 2.1 x its
  threshold, so its peaks often tie.
* **Colours**: the heat colours are the map on the colour bar's scale; the **green outline** (and the filled
  colour, in "fill" mode) marks the region at or above the threshold.
* **On a healthy scan** about one slice in twenty is called *anomalous* by design (the 95th percentile of
  healthy slices), more at the skull base and vertex. The API's volume percentile compares a scan's highest
  slice score with the highest of as many healthy slices.
* **consensus**: its residual map is the mean of its members' calibrated maps; its extra row **votes**
  counts how many of them flag each pixel (1.0 on its scale = all of them).
* **Extra rows** are *uncertainty and component maps*, on their own scale and not calibrated: DDAD's
  **uncertainty (NDM spread)** (its intra-discrepancy: the spread of its ensemble of autoencoders trained on
  healthy slices, the NDM), its **inter-discrepancy** (where the healthy and the mixed ensembles disagree) and
  its **NDM residual** (the input minus the NDM's mean reconstruction, before the refinement that gives its
  residual map); the diffusion model's **uncertainty (draw spread)** (the spread of its noise draws). High
  where a method disagrees with itself or before refinement: not a finding.
* **Methods**: ticking one after loading scores it on this scan (the others are kept); unticking all leaves
  the input alone. Clearing the upload box (x) empties the viewer; saved flags stay.
* Methods differ a lot in how well they find lesions: see each one's validation figures under "Methods
  and citations" (image AUROC 0.39-0.64 on the validation lesions, several below chance; on the test lesions
  the best, ddad, reaches 0.71: README); weigh their rows accordingly.
* The models learned healthy adult **T1-weighted brain MR** (from real templates with synthetic variation),
  as **axial** slices. Other images still get maps, under a banner that says the scores are not calibrated
  for them (then no decision is made). The banner is the scan's, whichever methods are ticked: it reads the
  file's metadata (modality, sequence), the pixels (a head on a dark background; many grey levels inside it
  and little of it as dark as the background, not a mask, drawing or text) and, on a volume, three reference
  models (ae, vae, dae) run on every scan's axial slices, whichever plane is shown: when most of them find
  most slices beyond every healthy one, as on a healthy brain from another scanner; coronal and sagittal planes are scored by the same axial models:
  their maps are shown, but no decision is made (on healthy coronal slices most would read *anomalous*).
"""

def clamp_js(elem_id: str) -> str:
    """Browser code that takes a slider's typed value to its range and to its nearest step (both read
    from its range input), as ``ClampedSlider`` does on the server."""
    return (f"(v) => {{ const r = document.querySelector('#{elem_id} input[type=range]'); "
            "if (!r || !isFinite(+v)) return r ? +r.min : v; const lo = +r.min, st = +r.step || 0; "
            "const s = st > 0 ? lo + Math.round((+v - lo) / st) * st : +v; "
            "return Math.min(+r.max, Math.max(lo, s)); }")


SCROLL_TO_GRID = "() => document.getElementById('grid')?.scrollIntoView({behavior: 'smooth', block: 'start'})"

CSS = (".banner {background:#5a1d1d; padding:8px; border-radius:6px} .banner, .banner * {color:#fff !important} "
       ".caption p {margin:0} "
       # a phone: the grid keeps a legible size and scrolls sideways (shrunk to the screen, each panel
       # was under 100 px wide and its captions unreadable)
       "@media (max-width: 700px) {#grid .image-container {overflow-x: auto !important} "
       "#grid .image-container > button, #grid .image-frame, #grid img "
       "{width: 900px !important; max-width: none !important; height: auto !important; max-height: none !important}}")


def _examples() -> tuple[list[list[list[str]]], list[str]]:
    """(rows, labels): one row per example, whose only value (the multiple-file input) is a list of
    paths, and its label (a file's name; a DICOM series: its folder and file count, not a cut-off
    list of names)."""
    ex, labels = [], []
    for name in ("synthetic_haemorrhage_t1.nii.gz", "synthetic_tumour_t1.nii.gz", "healthy_t1.nii.gz",
                 "synthetic_tumour_t1_axial.png",
                 "healthy_with_skull_t1_axial.png", "healthy_stripped_t1_axial.png"):
        p = EXAMPLES / name
        if p.exists():
            ex.append([[str(p)]])
            labels.append(name)
    dcm = ROOT / "assets" / "dicom" / "brain_pd_series"
    series = sorted(dcm.glob("*.dcm")) if dcm.is_dir() else []
    if series:
        ex.append([[str(p) for p in series]])
        labels.append(f"DICOM series: {dcm.name} ({len(series)} files)")
    return ex, labels


# What a visitor should know about a bundled example once it is loaded (assets/examples/README.md)
EXAMPLE_NOTES = {
    "synthetic_haemorrhage_t1.nii.gz": "a real healthy brain (Colin27) with a **synthetic** haemorrhage-like lesion "
                                       "(25 mm, axial slices 31-40; mask: `synthetic_haemorrhage_t1_mask.nii.gz`)",
    "synthetic_tumour_t1.nii.gz": "a real healthy brain (Colin27) with a **synthetic** non-enhancing tumour (30 mm; "
                                  "mask: `synthetic_tumour_t1_mask.nii.gz`), low-contrast on T1: no method here finds it",
    "synthetic_tumour_t1_axial.png": "a real healthy slice (Colin27) with a **synthetic** tumour (27 mm; mask: "
                                     "`synthetic_tumour_t1_axial_mask.png`)",
    "healthy_t1.nii.gz": "a real healthy brain (Colin27): about one slice in twenty reads anomalous by design",
    "healthy_with_skull_t1_axial.png": "a real healthy slice (Colin27, with skull)",
    "healthy_stripped_t1_axial.png": "a real healthy slice (MNI152 2009a, skull-stripped)",
}


def example_note(paths) -> str:
    """"Bundled example: ..." when the one loaded file is a bundled example (its name and size), else ""."""
    try:
        (p,) = [Path(x) for x in (paths or [])]
        ref = EXAMPLES / p.name
        same = p.name in EXAMPLE_NOTES and ref.is_file() and ref.stat().st_size == p.stat().st_size
    except (ValueError, TypeError, OSError):
        return ""
    return f"*Bundled example: {EXAMPLE_NOTES[p.name]} (`assets/examples/README.md`).*" if same else ""


EMPTY_SCORES = ["method", "decision", "percentile vs healthy"]
EMPTY_FINDINGS = ["method", "peak (x threshold)", "also flagged by"]


def _df(rows: list[dict], empty_columns: list[str] = EMPTY_SCORES) -> pd.DataFrame:
    """A table's rows; with none, its headers (not Gradio's "1 2 3")."""
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=empty_columns)


def _fail(e: Exception):
    raise gr.Error(str(e), duration=None, print_exception=False) from None


def _window(preset, key=None, warn: bool = True):
    """The window to draw with: one the app cannot read (or a CT window on another modality) warns
    (a toast, unless ``warn`` is False) and is drawn as 'auto'."""
    preset, problem = cb.usable_window(preset, key)
    if problem and warn:
        gr.Warning(problem)
    return preset


def window_in_force(preset, key=None):
    """The Window box set back to 'auto' when what it holds is drawn as 'auto' (a typo, a CT window on
    MR: the warning says so), so that the box says what is shown; unchanged otherwise."""
    return gr.update(value="auto") if cb.usable_window(preset, key)[1] else gr.update()


def _compare(a, pair, methods, compare_with):
    """The compare slider's update: the pair, captioned with whose pseudo-healthy it shows."""
    return gr.update(value=pair, label=cb.compare_label(a, methods, compare_with))


def _view_outputs(key, a, idx, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None,
                  zoom=1.0, zoom_centre=None, note: str = ""):
    """The viewer's outputs for analysis ``a`` at slice ``idx``. The red banner is kept for warnings
    (out of distribution); ``note`` (progress, stored results, a 2D image's one plane) heads the summary."""
    preset = _window(preset, key, warn=not a.partial)  # one toast per load: the preview's is left out
    grid, table, pair = cb.render_view(key, idx, preset, opacity, threshold, mode, methods, extra_rows, compare_with,
                                       zoom, zoom_centre)
    banner_text = "" if a.ood.in_distribution else a.ood.banner
    banner = gr.update(value=banner_text, visible=bool(banner_text))
    summary = cb.scan_summary(a)
    return (key, gr.update(maximum=max(a.n_slices - 1, 1), value=idx, interactive=a.n_slices > 1 and not a.partial,
                           label="Slice" if a.n_slices > 1 else "Slice (a 2D image: this one only)"),
            banner, f"{note.strip()}\n\n{summary}" if note.strip() else summary, cb.score_curve_figure(a, idx, methods), grid, _df(table),
            _df(cb.findings_rows(key, threshold, methods), EMPTY_FINDINGS), _compare(a, pair, methods, compare_with), gr.update(),
            gr.update(value=a.plane),  # the plane radio says the plane shown (a 2D image: axial)
            zoom_centre)  # a new scan: the zoom centres on the slice's middle until a click says otherwise


def on_upload(files, series, plane, methods, preset, opacity, threshold, mode, extra_rows=True, compare_with=None,
              zoom=1.0, progress=gr.Progress(), first_slice: int | None = None, stored: tuple | None = None):
    """Load; show the middle slice's overlays first (a volume), score the whole volume, then jump to
    its most anomalous slice (a generator: two updates for a volume, one for a 2D image).
    ``first_slice`` (an axial index, e.g. a batch result's stored top slice) replaces the middle one.
    ``stored`` = (maps file, content hash) of a batch result: its stored maps are shown at once, with
    no model run, unless the scan or a checkpoint changed since (then it is scored as usual)."""
    note = ""
    try:
        loaded = cb.load_upload(files, series or None)
        scan, preview_key = loaded[0], None
        note = example_note(loaded[1])
        note = f"{note} " if note else ""
        shown_in = cb.plane_of(scan, plane)
        if shown_in != plane:
            note += f"*A 2D image has one plane: shown as it is, not {plane}.* "
            plane = shown_in
        if stored is not None and plane == "axial":
            try:
                key, a = cb.open_stored(loaded, *stored)
            except StaleResultsError as e:
                note += f"*Stored batch results not used: {e}; scoring again.* "
            else:
                yield _view_outputs(key, a, a.most_anomalous_slice(), preset, opacity, threshold, mode, methods,
                                    extra_rows, compare_with, zoom, note=f"*Stored batch results, not rescored (methods: {', '.join(a.results)}). "
                                         "A method ticked now is scored here; another plane is scored afresh.*")
                return
        if cb.cached_analysis(scan, methods or None, plane, series or None) is None and scan.n_slices_in(plane) > 1:
            mid = cb.preview_slice(scan, plane)
            if first_slice is not None and plane == "axial" and 0 <= int(first_slice) < scan.n_slices_in(plane):
                mid = int(first_slice)
            preview_key, a = cb.load_and_analyse(files, methods or None, plane, series or None, loaded=loaded,
                                                 only=[mid])
            yield _view_outputs(preview_key, a, mid, preset, opacity, threshold, mode, methods, extra_rows,
                                compare_with, zoom, note=f"{note}*Slice {mid} scored first; scoring all {a.n_slices} slices...*")
        key, a = cb.load_and_analyse(files, methods or None, plane, series or None, loaded=loaded,
                                     progress=lambda p, desc="": progress(p, desc=desc))
        cb.forget(preview_key)
    except MultipleSeriesError as e:
        choices = [(v, k) for k, v in e.series.items()]
        gr.Warning("This upload holds several series: choose one and press Analyse.")
        yield (None, gr.update(), gr.update(value=f"**{e}**", visible=True), "", None, None, None, None, None,
               gr.update(choices=choices, visible=True, value=None), gr.update(), gr.update())
        return
    except AnomalyError as e:
        _fail(e)
    yield _view_outputs(key, a, a.most_anomalous_slice(), preset, opacity, threshold, mode, methods, extra_rows,
                        compare_with, zoom, note=note.strip())


def on_upload_page(files, *args, **kw):
    """The page's upload events: ``on_upload``, but a refused file clears the viewer and says why
    in the banner (the API endpoint ``analyse_view`` keeps raising). Raising would leave the previous
    scan in the session, with its key, behind "Error" badges: flags added next went to that scan.

    The page's box keeps the files listed before a new one is dropped on it: when its last file stands
    alone (an image of its own or an empty file, ``callbacks.newest_image``), that file is what is
    analysed, with a note, whatever else the box lists (a refused file or another DICOM series there
    decided what was shown, and the new scan never was)."""
    newest = cb.newest_image(files)
    try:
        if newest is None:
            yield from on_upload(files, *args, **kw)
            return
        gr.Info(f"The upload box holds several files: analysing the last one added ({newest.name}). "
                "Clear the box (x) to start afresh.")
        # the summary says so too (the toast goes): the box still lists every file
        said = (f"*The upload box holds several files: shown is the last one added ({newest.name}). "
                "Clear the box (x) to start afresh.*")
        for out in on_upload([str(newest)], *args, **kw):
            out = list(out)
            if isinstance(out[3], str):  # upload_outputs[3]: the summary
                out[3] = f"{said}\n\n{out[3]}" if out[3] else said
            out[9] = gr.update(choices=[], value=None, visible=False)  # a listed zip's series chooser is not this file's
            yield tuple(out)
    except gr.Error as e:
        gr.Warning(f"Not loaded: {e.message}")
        cleared = list(on_clear())
        cleared[2] = gr.update(value=f"**Not loaded:** {e.message}", visible=True)
        yield tuple(cleared)


def on_analyse_api(files, series, plane, methods, preset, opacity, threshold, mode, extra_rows=True,
                   compare_with=None, zoom=1.0, progress=gr.Progress()):
    """The endpoint ``analyse_view``: ``on_upload``, but a refused file (or any failure) first empties the
    session's scan (its key) and then raises: the previous scan stayed in the API session, and an
    ``add_flag`` sent next was filed on it, as if on the refused file."""
    try:
        yield from on_upload(files, series, plane, methods, preset, opacity, threshold, mode, extra_rows,
                             compare_with, zoom, progress=progress)
    except Exception:
        yield on_clear()
        raise


def on_clear():
    """The upload box was cleared (x): the viewer empties, as before any scan (stale maps of a scan
    no longer listed would mislead); saved flags stay in the store and the annotation panel keeps
    its case."""
    return (None, gr.update(minimum=0, maximum=1, value=0, interactive=False, label="Slice"), gr.update(value="", visible=False),
            "", None, None, _df([]), _df([], EMPTY_FINDINGS), gr.update(value=None, label="Compare: input vs pseudo-healthy"),
            gr.update(choices=[], value=None, visible=False), gr.update(), None)


def on_new_scan(files, series, plane, methods, preset, opacity, threshold, mode, extra_rows=True, compare_with=None,
                zoom=1.0, progress=gr.Progress()):
    """A scan dropped on the upload box or an example clicked: ``on_upload_page`` in the axial plane
    (the models' own, where decisions are made) at 1x, whatever the previous scan was left at; the
    zoom slider is set back too (the last output). The Analyse button keeps the chosen plane."""
    for out in on_upload_page(files, series, "axial", methods, preset, opacity, threshold, mode, extra_rows,
                              compare_with, 1.0, progress=progress):
        yield (*out, 1.0)


def on_view(key, index, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None, zoom=1.0,
            zoom_centre=None):
    if not key:  # a control touched before a scan is loaded (or after the box was cleared): nothing to draw
        return tuple(gr.update() for _ in range(4))
    try:
        grid, table, pair = cb.render_view(key, index, _window(preset, key), opacity, threshold, mode, methods, extra_rows,
                                           compare_with, zoom, zoom_centre)
        a = cb.get_analysis(key)
        return grid, _df(table), _compare(a, pair, methods, compare_with), cb.score_curve_figure(a, int(index), methods)
    except AnomalyError as e:
        _fail(e)


def on_threshold(key, index, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None, zoom=1.0,
                 zoom_centre=None):
    out = on_view(key, index, preset, opacity, threshold, mode, methods, extra_rows, compare_with, zoom, zoom_centre)
    if not key:
        return (*out, gr.update())
    return (*out, _df(cb.findings_rows(key, threshold, methods), EMPTY_FINDINGS))


def on_compare_choices(key, methods, current):
    """The compare slider's method box follows the shown methods (``callbacks.compare_choices``)."""
    choices, value = cb.compare_choices(key, methods, current)
    return gr.update(choices=choices) if value is None else gr.update(choices=choices, value=value)


def on_methods(key, index, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None, zoom=1.0,
               zoom_centre=None, progress=gr.Progress()):
    """The Methods checkboxes changed: a method ticked after loading is scored on the loaded slices
    (with a progress bar; its key is new, so the annotation panel offers it); the view, the findings
    list follow the ticked methods; the out-of-distribution banner stays the scan's. Nothing to do before a
    scan is loaded."""
    if not key:
        return tuple(gr.update() for _ in range(7))
    try:
        key, a = cb.ensure_methods(key, methods, progress=lambda p, desc="": progress(p, desc=desc))
    except AnomalyError as e:
        _fail(e)
    banner_text = "" if a.ood.in_distribution else a.ood.banner
    return (key, *on_threshold(key, index, preset, opacity, threshold, mode, methods, extra_rows, compare_with, zoom,
                               zoom_centre), gr.update(value=banner_text, visible=bool(banner_text)))


def on_plane(key, plane, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None, zoom=1.0,
             index=None, zoom_centre=None, progress=gr.Progress()):
    """Re-analyse the loaded scan in another plane, as an upload is: first the slice of the new plane
    through the point in view (the zoom centre on slice ``index``, else the strongest point a shown
    method flags on that slice, else its middle), then
    the whole plane (a plane seen before comes from the cache at once); the view stays on that point,
    which becomes the zoom centre. Nothing to do before a scan is loaded; a 2D image keeps its one
    plane and says so."""
    if not key:
        yield tuple(gr.update() for _ in range(10))
        return
    preview_key, point = None, None
    try:
        if index is not None:
            point = cb.same_point_in(key, index, zoom_centre, plane, methods or [])
        preview = cb.preview_plane(key, plane, None if point is None else point[0])
        if preview is not None:
            preview_key, p, mid = preview
            yield _plane_outputs(preview_key, p, mid, preset, opacity, threshold, mode, methods, extra_rows,
                                 compare_with, zoom, point, note=f"*{p.plane.capitalize()} slice {mid} scored first; scoring all {p.n_slices} slices...*")
        key, a = cb.reanalyse_plane(key, plane, progress=lambda p, desc="": progress(p, desc=desc))
        cb.forget(preview_key)
    except AnomalyError as e:
        _fail(e)
    if a.plane != plane:
        gr.Info(f"A 2D image has one plane: it stays as it is, not {plane}.")
    yield _plane_outputs(key, a, a.most_anomalous_slice() if point is None else point[0], preset, opacity, threshold,
                         mode, methods, extra_rows, compare_with, zoom, point,
                         note=example_note(getattr(a, "source_paths", None)))  # a bundled example still says so


def _plane_outputs(key, a, idx, preset, opacity, threshold, mode, methods, extra_rows=True, compare_with=None,
                   zoom=1.0, point=None, note: str = ""):
    """``_view_outputs`` in the order of the plane event's outputs (a preview's slider stays locked);
    ``point`` = (slice, [row, col]) of the point kept in view, which becomes the zoom centre."""
    centre = None if point is None else point[1]
    key, slider, _, summary, curve, grid, table, findings, pair, _, plane, _ = _view_outputs(
        key, a, idx, preset, opacity, threshold, mode, methods, extra_rows, compare_with, zoom, centre, note=note)
    return key, slider, curve, grid, table, findings, pair, summary, plane, (gr.update() if point is None else centre)


def on_finding(findings_df, evt: gr.SelectData):
    """Jump to the centre slice of the clicked finding; a zoom centres on it."""
    try:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
        f = findings_df.iloc[row]
        centre = [float(v) for v in str(f["centre (row, col)"]).split(",")]
        return gr.update(value=int(f["centre slice"])), centre
    except Exception:  # a click outside the data: stay where we are
        return gr.update(), gr.update()


def on_grid_click(key, zoom, zoom_centre, evt: gr.SelectData):
    """A click on any panel of the grid centres the (synchronised) zoom on that point of the slice."""
    try:
        px = cb.clicked_pixel(key, evt.index[0], evt.index[1], zoom, zoom_centre)
    except (AnomalyError, TypeError, IndexError):
        return gr.update()
    return gr.update() if px is None else list(px)


def on_demand(key, index, method, preset, threshold, opacity, mode, zoom=1.0, zoom_centre=None, progress=gr.Progress()):
    """Run a slow (diffusion) method on the slice in view, with a progress bar (at the viewer's zoom)."""
    if not method:
        raise gr.Error("no on-demand method has a checkpoint", print_exception=False)
    try:
        return cb.run_on_demand(key, index, method, _window(preset, key), threshold, opacity, mode,
                                progress=lambda done, total: progress((done, total), desc=method), zoom=zoom,
                                zoom_centre=zoom_centre)
    except AnomalyError as e:
        _fail(e)


def redraw_on_demand(shown, key, index, method, preset, threshold, opacity, mode, zoom=1.0, zoom_centre=None):
    """The on-demand panel with the viewer's new overlay settings, when it shows a result (run again on
    the same slice: seeded, so the same map); left as it is when empty."""
    if not shown or not key or not isinstance(shown, dict):
        return gr.update(), gr.update()
    try:
        return cb.run_on_demand(key, int(shown.get("slice", index)), shown.get("method") or method,
                                _window(preset, key, warn=False), threshold, opacity, mode, zoom=zoom,
                                zoom_centre=zoom_centre)
    except AnomalyError:  # the scan left the cache meanwhile: nothing stale is left on screen
        return None, None


def clear_on_demand():
    """The on-demand panel's outputs, emptied (a new scan or plane was loaded)."""
    return None, None


def analyze_api(files: list[str], methods: str = "", plane: str = "axial", threshold: float = 1.0) -> str:
    """API: analyse a scan; returns JSON (study key, per-method volume/slice scores, percentiles,
    score table at the most anomalous slice, findings, out-of-distribution verdict)."""
    try:
        ms = [m.strip() for m in methods.split(",") if m.strip()] or None
        key, a = cb.load_and_analyse(files, ms, plane)
        return json.dumps(cb.api_summary(a, None, threshold))
    except AnomalyError as e:
        raise gr.Error(str(e), print_exception=False) from None


def build_app() -> gr.Blocks:
    choices = cb.method_choices()
    default = cb.default_methods()
    with gr.Blocks(title="Anomaly review station", delete_cache=(600, 3600)) as demo:
        key = gr.State(None)
        zoom_centre = gr.State(None)  # (row, col) of the slice that the zoom centres on
        gr.Markdown("# Anomaly review station\nUnsupervised anomaly detection in brain MR: pseudo-healthy "
                    "reconstructions, residual maps and calibrated scores, method by method.")
        gr.Markdown(NOTICE)
        banner = gr.Markdown(visible=False, elem_classes=["banner"])
        with gr.Tabs(elem_id="main-tabs") as tabs:
            with gr.Tab("Review", id="review"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        files = gr.File(label="Scan (DICOM, zip, NIfTI, PNG/JPG/TIFF)", file_count="multiple", height=150,
                                        type="filepath", elem_id="scan-files")
                        # the loader checks the value (a series key of the upload, or a UID from a script): Gradio's
                        # own check refused a key sent by a fresh API client and echoed a refused UID in the log
                        series = gr.Dropdown(label="Series", choices=[], visible=False, allow_custom_value=True)
                        analyse_btn = gr.Button("Analyse", variant="primary")
                        api_analyse = gr.Button("analyse (API)", visible=False)  # raises its errors
                        example_rows, example_labels = _examples()
                        examples = (gr.Examples(example_rows, inputs=[files], example_labels=example_labels,
                                                label="Examples: click one to analyse it (lesions marked 'synthetic' "
                                                "are synthetic)") if example_rows else None)
                        methods = gr.CheckboxGroup(label="Methods (best validation pixel AP first)", choices=choices,
                                                   value=default, elem_id="methods")
                        plane = gr.Radio(["axial", "coronal", "sagittal"], value="axial", label="Plane")
                        preset = gr.Dropdown(WINDOW_CHOICES, value="auto", allow_custom_value=True,
                                             label="Window: a preset, or type level and width, e.g. L40 W80")
                        opacity = ClampedSlider(0, 1, value=0.5, step=0.05, label="Overlay opacity",
                                                elem_id="opacity-slider")
                        threshold = ClampedSlider(0.25, 3, value=1.0, step=0.05, label="Threshold (x healthy threshold)",
                                                  elem_id="threshold-slider")
                        mode = gr.Radio(["fill", "contour", "both"], value="both", label="Overlay")
                        zoom = ClampedSlider(1, 4, value=1, step=0.5, label="Zoom (every panel together; click a panel "
                                         "or a finding to centre it)", elem_id="zoom-slider")
                        extra_rows = gr.Checkbox(True, label="Extra maps (uncertainty, discrepancies, votes) as rows "
                                                              "of their own")
                    with gr.Column(scale=3):
                        summary = gr.Markdown()
                        # captions as text above, not as labels drawn over the figure and the grid's first row
                        gr.Markdown("**Per-slice score** (percentile vs healthy), one line per method; dotted line: slice in view",
                                    elem_classes=["caption"])
                        curve = gr.Plot(label="Per-slice score (percentile vs healthy), one line per method", show_label=False)
                        # under the curve (whose x axis is the slice) and right above the grid: on a phone, where the
                        # columns stack, the slider was a curve's height away from the images it moves
                        slider = ClampedSlider(0, 1, value=0, step=1, label="Slice", interactive=False, elem_id="slice-slider")
                        gr.Markdown("**Per method: input | pseudo-healthy | residual map | overlay** (colours calibrated "
                                    "against healthy: 1.0 = threshold)", elem_classes=["caption"])
                        grid = gr.Image(label="input | pseudo-healthy | residual map | overlay (calibrated against healthy)", elem_id="grid",
                                        show_label=False, type="pil", format="png", interactive=False)
                        # headers before a scan is loaded (not Gradio's "1 2 3"); the full columns come with it
                        table = gr.Dataframe(_df([]),
                                             label="Scores at this slice (the percentile vs healthy decides: the 95th and "
                                             "above flags the slice; score and raw score are scales of each method's "
                                             "own, see 'How to read this')", interactive=False)
                        findings = gr.Dataframe(_df([], EMPTY_FINDINGS),
                                                label="Findings: connected regions above threshold (in 3D for a volume) "
                                                "(click to jump)", interactive=False)
                        od_choices = cb.on_demand_methods()
                        with gr.Accordion(cb.on_demand_heading(od_choices), open=False):
                            od_method = gr.Dropdown(od_choices, value=od_choices[0] if od_choices else None,
                                                    label="Method run on demand (this slice only, seeded: the same "
                                                          "slice gives the same map)")
                            # enabled once a scan is loaded (before, a click could only answer "no scan loaded")
                            od_btn = gr.Button("Run on this slice", interactive=False)
                            gr.Markdown("**On-demand result** (calibrated against healthy)", elem_classes=["caption"])
                            od_grid = gr.Image(label="on-demand result (calibrated against healthy)", show_label=False,
                                               type="pil", format="png", interactive=False)
                            od_json = gr.JSON(label="score")
                        compare_with = gr.Dropdown([cb.AUTO_COMPARE, *default], value=cb.AUTO_COMPARE,
                                                   label="Compare slider below: pseudo-healthy of")
                        compare = gr.ImageSlider(label="Compare: input vs pseudo-healthy", type="numpy", format="png",
                                                 buttons=["fullscreen"])  # one button over the image's corner
                        with gr.Accordion("How to read this", open=False):
                            gr.Markdown(HOW_TO_READ)
                        with gr.Accordion("Methods and citations", open=False):
                            gr.Markdown(cb.citations_markdown())

                view_inputs = [key, slider, preset, opacity, threshold, mode, methods, extra_rows, compare_with, zoom,
                               zoom_centre]
                upload_outputs = [key, slider, banner, summary, curve, grid, table, findings, compare, series, plane,
                                  zoom_centre]
                up_inputs = [files, series, plane, methods, preset, opacity, threshold, mode, extra_rows, compare_with,
                             zoom]
                # every way of loading a scan (button, upload, example) runs in one queue, one load at a time in
                # the order asked (so an upload made while an example scores is shown last, whichever is
                # faster), and a load asked for while the same one runs follows it with the latest input
                # (always_last): a second example clicked during the first's scoring was dropped ("once"),
                # leaving the first scan on screen under the second's name
                analyse_btn.click(on_upload_page, up_inputs, upload_outputs, api_visibility="private", **LOAD_QUEUE)
                api_analyse.click(on_analyse_api, up_inputs, upload_outputs, api_name="analyse_view")
                files.upload(on_new_scan, up_inputs, [*upload_outputs, zoom], api_visibility="private", **LOAD_QUEUE)
                files.clear(on_clear, None, upload_outputs, api_visibility="private")
                # any user change (drag, arrow keys, typed number); always_last skips stale drag positions
                slider.input(on_view, view_inputs, [grid, table, compare, curve], api_name="render_slice",
                             trigger_mode="always_last")
                for c in (preset, opacity, mode, extra_rows, compare_with):
                    c.change(on_view, view_inputs, [grid, table, compare, curve], api_visibility="private")
                preset.change(window_in_force, [preset, key], [preset], api_visibility="private")
                key.change(window_in_force, [preset, key], [preset], api_visibility="private")
                # a typed number out of range: the box shows the end the server takes (ClampedSlider), set in the
                # browser (a server echo of each value came back late and undid fast arrow-key steps)
                slider.input(None, [slider], [slider], js=clamp_js("slice-slider"))
                # the on-demand result is of one slice: another slice (moved, a finding, a new scan) clears it
                slider.change(clear_on_demand, None, [od_grid, od_json], api_visibility="private")
                zoom.input(None, [zoom], [zoom], js=clamp_js("zoom-slider"))
                # the same for the overlay sliders: a typed 7 in Threshold showed 7 while 3 was drawn
                threshold.input(None, [threshold], [threshold], js=clamp_js("threshold-slider"))
                opacity.input(None, [opacity], [opacity], js=clamp_js("opacity-slider"))
                zoom.input(on_view, view_inputs, [grid, table, compare, curve], api_visibility="private",
                           trigger_mode="always_last")
                grid.select(on_grid_click, [key, zoom, zoom_centre], [zoom_centre], api_visibility="private").then(
                    on_view, view_inputs, [grid, table, compare, curve], api_visibility="private")
                # the findings list and its "also flagged by" follow the shown methods
                # a user's ticks (.input): the Worklist sets the boxes to a study's stored methods with the view
                # it opens, and a redraw then would read the slider before the study's slice reached it
                # always_last: ticks made while one is scored end on the last state of the boxes, none dropped
                methods.input(on_methods, view_inputs, [key, grid, table, compare, curve, findings, banner],
                              api_visibility="private", trigger_mode="always_last")
                # the compare slider offers the shown methods that have a pseudo-healthy image
                for ev in (methods.change, key.change):
                    ev(on_compare_choices, [key, methods, compare_with], [compare_with], api_visibility="private")
                threshold.input(on_threshold, view_inputs, [grid, table, compare, curve, findings], api_visibility="private",
                                trigger_mode="always_last")
                # a user's choice only (.input): the events that set the radio back (a 2D image) must not fire it
                plane.input(on_plane, [key, plane, preset, opacity, threshold, mode, methods, extra_rows, compare_with,
                                       zoom, slider, zoom_centre],
                            [key, slider, curve, grid, table, findings, compare, summary, plane, zoom_centre],
                            api_name="change_plane")
                findings.select(on_finding, [findings], [slider, zoom_centre], api_visibility="private").then(
                    on_view, view_inputs, [grid, table, compare, curve], api_visibility="private").then(
                    None, js=SCROLL_TO_GRID)  # the grid is far above the findings table: bring it into view
                od_btn.click(on_demand, [key, slider, od_method, preset, threshold, opacity, mode, zoom, zoom_centre],
                             [od_grid, od_json],
                             api_name="run_on_demand")
                # another scan or plane: the on-demand result of the previous one goes
                key.change(clear_on_demand, None, [od_grid, od_json], api_visibility="private")
                key.change(lambda k: gr.update(interactive=bool(k) and bool(od_choices)), [key], [od_btn],
                           api_visibility="private")
                # the overlay settings change: a result on screen is redrawn with them (seeded: the same map)
                od_inputs = [od_json, key, slider, od_method, preset, threshold, opacity, mode, zoom, zoom_centre]
                for c in (preset, opacity, mode):
                    c.change(redraw_on_demand, od_inputs, [od_grid, od_json], api_visibility="private")
                for c in (threshold, zoom):
                    c.input(redraw_on_demand, od_inputs, [od_grid, od_json], api_visibility="private",
                            trigger_mode="always_last")
                if examples is not None:  # a click on an example analyses it, as an upload does
                    examples.load_input_event.then(on_new_scan, up_inputs, [*upload_outputs, zoom], api_visibility="private",
                                                   **LOAD_QUEUE)
                    # on a phone the result lands far below the examples: go to it
                    examples.load_input_event.then(None, js=f"() => {{ if (window.innerWidth < 700) ({SCROLL_TO_GRID})(); }}")
                gr.api(analyze_api, api_name="analyze")
                annotation_panel(key, slider, plane, methods, threshold, view=(on_view, view_inputs, [grid, table, compare, curve]))
            with gr.Tab("Worklist", id="worklist"):
                build_worklist(on_upload, up_inputs[2:], upload_outputs, tabs=tabs, review_tab_id="review",
                               methods_box=methods, files_box=files)
    return demo


def launch(argv: list[str] | None = None, **kw) -> None:
    """Serve the app: ``python app.py [--host H] [--port P]`` (defaults: GRADIO_SERVER_NAME /
    GRADIO_SERVER_PORT, else 127.0.0.1:7860). Checkpoints: ANOMALY_CHECKPOINTS; store: ANOMALY_DATA_DIR."""
    import argparse

    p = argparse.ArgumentParser(prog="app.py", description="The anomaly review station (Gradio). Environment: "
                                "ANOMALY_CHECKPOINTS (checkpoint root), ANOMALY_DATA_DIR (annotation store, exports).")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0: every interface; default %(default)s)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   help="port (default %(default)s)")
    args = p.parse_args(argv)
    demo = build_app()
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_FILE_SIZE,
        show_error=True,
        css=CSS,
        theme=gr.themes.Soft(),
        **kw,
    )
