"""The Worklist tab: a batch-results folder (``python -m anomaly.batch``) as a ranked list of studies.

Plain functions (tested without the UI) read the results, rank and filter them and join the
review status from the annotation store; ``build_worklist`` lays out the tab and wires its events.
A row opens its study in the review view at its most anomalous slice: the scan is loaded from its
path and shown with the batch run's stored maps and scores (no model runs) when the file and the
checkpoints are unchanged, else analysed again. The page shows study keys, never source paths (folder
and file names may hold patient names).
"""

from __future__ import annotations

import inspect
import io
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from anomaly.calibration import percentile_text
from anomaly.errors import AnomalyError
from anomaly.ui import LOAD_QUEUE, refusal_as_message

RESULTS_ENV = "ANOMALY_RESULTS"
ANY = "(any)"
STUDY = "(study: all methods)"
GALLERY_SIZE = 24
_CACHE: "OrderedDict[tuple, pd.DataFrame]" = OrderedDict()
_LOCK = threading.Lock()


def default_results_dir() -> str:
    return os.environ.get(RESULTS_ENV, "runs/batch")


WORKLIST_COLUMNS = ["study", "score", "percentile", "opens at slice", "method's top slice", "top-slice score", "OOD",
                    "review", "flags", "false positives", "modality", "slices", "result"]
ROOTS_ENV = "ANOMALY_RESULTS_ROOTS"  # more folders (os.pathsep-separated) the Worklist may open results under


def results_roots() -> list[Path]:
    """The folders under which the Worklist opens results: the project's ``runs/``, the folder that
    holds the default results folder (``ANOMALY_RESULTS``), and those in ``ANOMALY_RESULTS_ROOTS``."""
    roots = [Path("runs"), Path(default_results_dir()).parent]
    roots += [Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def allowed_folder(folder: str | Path) -> Path:
    """``folder`` (the default results folder when empty) if it lies under ``results_roots``; else a
    refusal that says the same whether or not it exists (the box must not probe the server's disk)."""
    folder = Path(str(folder or "").strip() or default_results_dir())
    resolved = folder.resolve()
    if not any(resolved == r or r in resolved.parents for r in results_roots()):
        raise AnomalyError(f"'{folder.name or folder}' is not a results folder this app may open: results are opened "
                           f"under runs/ or the folders that whoever runs the app names in {ROOTS_ENV}")
    return folder


def load_results(folder: str | Path) -> pd.DataFrame:
    """Every study of a results folder under ``results_roots`` (cached until a part is added or changed)."""
    from anomaly.batch.results import part_files, read_results

    folder = allowed_folder(folder)
    name = folder.name or str(folder)
    if not folder.exists():
        raise AnomalyError(f"results folder '{name}' does not exist: run `python -m anomaly.batch "
                           "--input COHORT --out FOLDER` first, then give that FOLDER")
    if not folder.is_dir():
        raise AnomalyError(f"'{name}' is a file, not a results folder")
    parts = part_files(folder)
    if not parts:
        raise AnomalyError(f"no batch results in '{name}' (no .parquet parts in it): run `python -m anomaly.batch "
                           "--input COHORT --out FOLDER` first")
    memo = (str(folder.resolve()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in parts))
    with _LOCK:
        if memo in _CACHE:
            _CACHE.move_to_end(memo)
            return _CACHE[memo]
    df = read_results(folder)
    if df.empty:
        raise AnomalyError(f"none of the {len(parts)} results part(s) in '{name}' could be read (truncated "
                           "or not written by `python -m anomaly.batch`)")
    with _LOCK:
        _CACHE[memo] = df
        while len(_CACHE) > 4:
            _CACHE.popitem(last=False)
    return df


def methods_of(df: pd.DataFrame) -> list[str]:
    """Methods with scores in the results; a summarising method (the consensus) first when present,
    then the app's order (best validation pixel AP first)."""
    from anomaly.batch.results import result_methods
    from anomaly.ui.callbacks import validation_rank

    ms = result_methods(df)
    return sorted(ms, key=lambda m: (not _summarises(m), validation_rank(m)))


def _summarises(name: str) -> bool:
    """Whether ``name`` is a registered method that summarises the others (False for an unknown name,
    e.g. a results file of a method this installation lacks)."""
    from anomaly.errors import UnknownMethodError
    from anomaly.methods.base import method_class

    try:
        return method_class(name).summarises
    except UnknownMethodError:
        return False


def review_info() -> dict[str, dict]:
    """Study key -> review status and flag counts from the annotation store."""
    from anomaly.annotations import service as svc

    try:
        cases = svc.get_store().list_cases()
    except Exception:  # noqa: BLE001 - no store (read-only deployment without a database): no counts
        return {}
    return {c.study_key: {"status": c.status, "flags": c.n_flags, "false positives": c.n_false_positives}
            for c in cases}


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def worklist_rows(df: pd.DataFrame, method: str | None = None, min_percentile: float = 0.0, ood_only: bool = False,
                  status: str = ANY, review: dict[str, dict] | None = None) -> pd.DataFrame:
    """The ranked, filtered table: highest ``method`` volume score first, failed studies last."""
    methods = methods_of(df)
    method = method if method in methods else (methods[0] if methods else None)
    review = review_info() if review is None else review
    out = []
    for _, r in df.iterrows():
        rv = review.get(r["study_key"], {"status": "not started", "flags": 0, "false positives": 0})
        ok = r["status"] == "ok"
        score = _num(r.get(f"{method}__score")) if method and ok else float("nan")
        pct = _num(r.get(f"{method}__percentile")) if method and ok else float("nan")
        top = r.get(f"{method}__top_slice") if method and ok else None
        out.append({
            "study": r["study_key"],
            "score": round(score, 5) if np.isfinite(score) else None,
            "percentile": round(pct, 1) if np.isfinite(pct) else None,
            # where the Review tab opens the study (the app's rule, all methods) and, apart, the
            # ranking method's own highest-scoring slice, which may differ
            "opens at slice": int(r["top_slice"]) if ok and np.isfinite(_num(r.get("top_slice"))) else None,
            "method's top slice": int(top) if top is not None and np.isfinite(_num(top)) else None,
            "top-slice score": round(_num(r.get(f"{method}__top_score")), 5) if method and ok else None,
            "OOD": ("yes: " + str(r.get("ood_reasons") or "")) if ok and bool(r.get("ood")) else ("no" if ok else ""),
            "review": rv["status"], "flags": rv["flags"], "false positives": rv["false positives"],
            "modality": r.get("modality") if ok else "",
            "slices": int(r["n_slices"]) if ok and np.isfinite(_num(r.get("n_slices"))) else None,
            "result": "ok" if ok else f"failed: {r.get('error_type')}: {r.get('error')}",
            "_sort": score if np.isfinite(score) else -np.inf,
        })
    t = pd.DataFrame(out, columns=[*WORKLIST_COLUMNS, "_sort"])
    if min_percentile and float(min_percentile) > 0:
        t = t[t["percentile"].fillna(-1) >= float(min_percentile)]
    if ood_only:
        t = t[t["OOD"].str.startswith("yes")]
    if status and status != ANY:
        t = t[t["review"] == status]
    t = t.sort_values(["_sort", "study"], ascending=[False, True], kind="stable").drop(columns="_sort")
    t.insert(0, "rank", range(1, len(t) + 1))
    return t.reset_index(drop=True)


def _row(df: pd.DataFrame, study_key: str) -> pd.Series:
    hit = df[df["study_key"] == study_key]
    if not len(hit):
        raise AnomalyError(f"study {study_key} is not in these results")
    return hit.iloc[-1]


def thumbnail(df: pd.DataFrame, study_key: str, method: str | None = None) -> np.ndarray | None:
    """The stored top-slice thumbnail (RGB) of a study: the method's own, else the study's."""
    from PIL import Image

    r = _row(df, study_key)
    data = r.get(f"{method}__thumbnail") if method else None
    if data is None or (isinstance(data, float) and np.isnan(data)):
        data = r.get("thumbnail")
    if not isinstance(data, (bytes, bytearray)) or not data:
        return None
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def gallery(df: pd.DataFrame, table: pd.DataFrame, method: str | None, n: int = GALLERY_SIZE) -> list[tuple]:
    """(thumbnail, caption) of the first ``n`` studies of the table."""
    items = []
    for _, t in table.head(n).iterrows():
        img = thumbnail(df, t["study"], method)
        if img is not None:
            pct = "" if t["percentile"] is None or pd.isna(t["percentile"]) else f", {percentile_text(round(t['percentile']))} pct"
            items.append((img, f"{t['rank']}. {t['study']}{pct}"))
    return items


def study_files(df: pd.DataFrame, study_key: str) -> list[str]:
    """The files of a study, from its source path; a DICOM series is re-found among its folder's files
    by its SeriesInstanceUID grouping (exactly the files that were scored)."""
    from anomaly.batch.discovery import dicom_groups, item_files

    src = str(_row(df, study_key)["source"])
    folder = Path(src.rsplit("#series", 1)[0])
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for it in dicom_groups(folder, files):
            if it["source"] == src:
                return [str(p) for p in item_files(it)]
        raise AnomalyError(f"study {study_key}: its DICOM series is no longer in its folder")
    if not folder.exists():
        raise AnomalyError(f"study {study_key}: its scan is no longer where it was scored")
    return [str(folder)]


def keyed_with_this_salt(df: pd.DataFrame) -> bool | None:
    """Were these results keyed with this app's study-key salt? None when no row can tell.

    A batch run keys each study as ``study_key(content hash)`` with the salt of the machine that
    ran it; rows whose key this app recomputes from their content hash were keyed with its salt."""
    from anomaly.keys import study_key

    if not {"content_hash", "study_key"} <= set(df.columns):
        return None
    rows = df[df["content_hash"].notna() & ~df["content_hash"].astype(str).str.startswith("unreadable-")]
    if rows.empty:
        return None
    return any(study_key(str(h)) == k for h, k in zip(rows["content_hash"], rows["study_key"]))


def summary(df: pd.DataFrame, table: pd.DataFrame, method: str | None) -> str:
    n_ok = int((df["status"] == "ok").sum())
    text = (f"**{len(df)} studies** in the results ({n_ok} scored, {len(df) - n_ok} failed); "
            f"{len(table)} shown, ranked by **{method or 'n/a'}** volume score (the study's highest slice score; "
            "the percentile beside it compares that with healthy slices, and a volume's reads lower than an "
            "image's for the same score: it is the highest of many slices). "
            "Click a row to open the study in the Review tab at its most anomalous slice.")
    if keyed_with_this_salt(df) is False:
        text += ("\n\n**These results were keyed with another study-key salt than this app's** (the batch ran "
                 "with another `ANOMALY_STUDY_SALT` or data folder): a study opened here gets another key, so "
                 "its flags and review status will not show in these rows. Run the batch and the app with the "
                 "same `ANOMALY_STUDY_SALT` (or `ANOMALY_DATA_DIR`).")
    return text


# ----------------------------------------------------------------------------- gradio


def on_open_folder(folder, method):
    """Load a results folder: method choices, table, gallery, summary."""
    try:
        df = load_results(folder)
    except AnomalyError as e:
        raise gr.Error(str(e), print_exception=False) from None
    ms = methods_of(df)
    method = method if method in ms else (ms[0] if ms else None)
    table = worklist_rows(df, method)
    return (gr.update(choices=ms, value=method), table, gallery(df, table, method), summary(df, table, method))


def on_filter(folder, method, min_percentile, ood_only, status):
    try:
        df = load_results(folder)
    except AnomalyError as e:
        raise gr.Error(str(e), print_exception=False) from None
    table = worklist_rows(df, method, min_percentile or 0, bool(ood_only), status or ANY)
    return table, gallery(df, table, method), summary(df, table, method)


def on_select(folder, table: pd.DataFrame, method, evt: gr.SelectData):
    """A clicked row: its study key and stored thumbnail."""
    try:
        if getattr(evt, "row_value", None):
            key = str(evt.row_value[list(table.columns).index("study")])
        else:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
            key = str(table.iloc[row]["study"])
        return key, thumbnail(load_results(folder), key, method)
    except Exception:  # noqa: BLE001 - a click outside the data
        return None, None


def worklist_api(folder: str, method: str = "", min_percentile: float = 0.0, ood_only: bool = False,
                 status: str = ANY) -> str:
    """API: the ranked, filtered worklist of a results folder as JSON rows."""
    try:
        rows = worklist_rows(load_results(folder), method or None, min_percentile, ood_only, status)
    except AnomalyError as e:
        raise gr.Error(str(e), print_exception=False) from None
    # slice numbers as integers (a column with a failed study's None is float in the table), gaps as null
    ints = {"opens at slice", "method's top slice", "slices", "flags", "false positives"}
    recs = [{k: (None if v is None or (isinstance(v, float) and not np.isfinite(v))
                 else int(v) if k in ints else v) for k, v in r.items()}
            for r in rows.astype(object).to_dict(orient="records")]
    return json.dumps(recs)


def stored_top_slice(df: pd.DataFrame, study_key: str) -> int | None:
    """The study's most anomalous (axial) slice as the batch stored it: the review view scores and
    shows it first, before the rest of the volume."""
    v = _row(df, study_key).get("top_slice")
    return None if v is None or pd.isna(v) else int(v)


def stored_maps(folder, df: pd.DataFrame, study_key: str) -> tuple[Path, str]:
    """(maps file, content hash) of a study: what the review view needs to show its stored results
    without scoring it again (it checks that the scan and the checkpoints are unchanged)."""
    from anomaly.batch.maps import maps_path

    h = str(_row(df, study_key)["content_hash"])
    return maps_path(Path(str(folder or "").strip() or default_results_dir()), h), h


def open_study(folder, study_key: str) -> list[str]:
    """The files to load for ``study_key`` (for the review view's loader)."""
    if not study_key:
        raise AnomalyError("pick a study in the worklist first")
    return study_files(load_results(folder), study_key)


def not_openable(df: pd.DataFrame, study_key: str) -> str | None:
    """Why a study cannot be opened in the Review tab (the batch run failed on it), else None."""
    r = _row(df, study_key)
    if r.get("status") == "ok":
        return None
    return (f"Study {study_key} was not scored by the batch run ({r.get('error_type')}: {r.get('error')}); "
            "there is nothing to open.")


def methods_ticks(key):
    """The review view's Methods ticks for the opened study: the methods its analysis holds (a batch
    run's stored ones), so that the boxes say what the grid shows; no change without an analysis."""
    from anomaly.ui import callbacks as cb

    try:
        return gr.update(value=cb.in_method_order(cb.get_analysis(key).results))
    except (AnomalyError, TypeError):
        return gr.update()


def build_worklist(open_view, review_inputs: list, review_outputs: list, tabs=None, review_tab_id: str = "review",
                   methods_box=None, files_box=None):
    """Lay out the Worklist tab in the current Blocks context and wire its events.

    ``open_view(files, series, *review_inputs)`` is the review view's upload callback (it returns
    ``review_outputs``, the analysis key first); ``tabs`` (a ``gr.Tabs``) is switched to
    ``review_tab_id`` after opening; ``methods_box`` (the review view's Methods checkboxes) is set to
    the methods the opened study shows (a batch run's stored ones); ``files_box`` (the review view's
    upload box) is emptied, so that it does not list another scan than the one shown."""
    from anomaly.annotations.store import STATUSES

    gr.Markdown("Studies scored by `python -m anomaly.batch`, ranked by volume score. Thumbnails are the "
                "stored top slices. Opening a study shows it in the Review tab at its most anomalous slice with "
                "the stored maps and scores (no rescoring) when its file and the checkpoints are unchanged; "
                "otherwise it is scored again, its stored top slice first.")
    with gr.Row():
        folder = gr.Textbox(default_results_dir(), label="Results folder", scale=4)
        open_btn = gr.Button("Open results", variant="primary", scale=1)
    with gr.Row():
        method = gr.Dropdown([], label="Rank by method", allow_custom_value=True)
        min_pct = gr.Slider(0, 100, value=0, step=1, label="Minimum percentile vs healthy")
        ood_only = gr.Checkbox(False, label="Out-of-distribution only")
        status = gr.Dropdown([ANY, *STATUSES], value=ANY, label="Review status")
    info = gr.Markdown()
    empty = pd.DataFrame(columns=WORKLIST_COLUMNS)  # headers before any folder (and after a refused one)
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(empty, label="Worklist (click a row to open the study)", interactive=False,
                                 elem_id="worklist-table")
        with gr.Column(scale=1, min_width=220):
            selected = gr.Textbox(label="Selected study", interactive=False)
            thumb = gr.Image(label="Top slice (stored thumbnail)", type="numpy", interactive=False)
            open_study_btn = gr.Button("Open in review")
    thumbs = gr.Gallery(label="Top slices of the first studies", columns=8, height=240, object_fit="contain")

    filters = [folder, method, min_pct, ood_only, status]
    open_out = [method, table, thumbs, info]
    # the tab's own events: a refusal (bad folder, ...) is a line in the summary, not error badges
    # a refused folder leaves no other folder's studies on screen
    open_ui = refusal_as_message(on_open_folder, len(open_out), open_out.index(info), "Not opened",
                                 cleared={open_out.index(table): empty, open_out.index(thumbs): []})
    open_btn.click(open_ui, [folder, method], open_out, api_visibility="private")
    folder.submit(open_ui, [folder, method], open_out, api_visibility="private")
    api_open = gr.Button("open results (API)", visible=False)
    api_open.click(on_open_folder, [folder, method], open_out, api_name="worklist_open_folder")
    flt = [method, min_pct, ood_only, status]
    for c in flt:  # the slider: any user change (keyboard too), the latest position only
        (c.input if c is min_pct else c.change)(refusal_as_message(on_filter, 3, 2, "Not opened", cleared={0: empty, 1: []}),
                                                 filters,
                                                 [table, thumbs, info],
                                                 api_visibility="private", trigger_mode="always_last")

    outs = [*review_outputs, *([tabs] if tabs is not None else []), *([methods_box] if methods_box is not None else []),
            *([files_box] if files_box is not None else [])]

    def _open(folder_v, key, *review_values, progress=gr.Progress()):
        """Open a study; passes on every update of the review view's callback (a generator or not)."""
        if not key:  # a click outside the data, or the button before a study was picked
            gr.Info("Pick a study in the worklist first (click its row).")
            yield tuple(gr.update() for _ in outs)
            return
        try:
            df = load_results(folder_v)
            refusal = not_openable(df, key)
            if refusal:  # nothing to show: say why, leave the Review tab as it is (no Error badges)
                gr.Warning(refusal)
                yield tuple(gr.update() for _ in outs)
                return
            files = study_files(df, key)  # the results read once, above
            top = stored_top_slice(df, key)
            stored = stored_maps(folder_v, df, key)
        except AnomalyError as e:
            raise gr.Error(str(e), print_exception=False) from None
        res = open_view(files, None, *review_values, progress=progress, first_slice=top, stored=stored)
        for step in (res if inspect.isgenerator(res) else [res]):
            step = tuple(step)
            if tabs is not None:
                step += (gr.update(selected=review_tab_id),)
            if methods_box is not None:
                step += (methods_ticks(step[0] if step else None),)
            if files_box is not None:  # the box listed the previous upload: Analyse would have scored that
                step += (None,)
            yield step

    sel = table.select(on_select, [folder, table, method], [selected, thumb], api_visibility="private")
    # in the review view's load queue: a study opened while an upload scores is shown after it, not under it
    sel.then(_open, [folder, selected, *review_inputs], outs, api_visibility="private", **LOAD_QUEUE)
    open_study_btn.click(_open, [folder, selected, *review_inputs], outs, api_name="worklist_open_study", **LOAD_QUEUE)
    gr.api(worklist_api, api_name="worklist")
    return {"folder": folder, "method": method, "table": table, "selected": selected, "thumb": thumb,
            "gallery": thumbs, "info": info}
