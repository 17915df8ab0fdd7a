"""Callbacks of the review app as plain functions (tested without the UI).

Analyses are kept server-side in a small LRU cache keyed by an opaque session key, so
changing slice, window or overlay settings re-renders without re-running the models.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.analysis import Analysis, analyse, extra_map_rows, sig_figs
from anomaly.calibration import percentile_text
from anomaly.errors import AnomalyError, MultipleSeriesError
from anomaly.methods.base import available_methods, get_method, method_class
from anomaly.preprocess import MIN_BRAIN_FRACTION
from anomaly.render import RenderConfig, panel_pixel, zoom_window
from anomaly.scan import check_plane, plane_point_to_voxel, plane_size, voxel_to_plane_point
from anomaly.windowing import PRESETS, check_window, is_ct

MAX_CACHED = 6
_CACHE: "OrderedDict[str, Analysis]" = OrderedDict()
_LOCK = threading.Lock()


# and at most this much memory (scans, maps, drawn maps): a few 1024 x 1024 x 120 uploads each held
# several GB, so six of them could exhaust the server
MAX_CACHED_BYTES = int(float(os.environ.get("ANOMALY_CACHE_GB", "4")) * 2**30)


def analysis_bytes(a: Analysis) -> int:
    """Memory an analysis holds in arrays (scan, prepared slices, every method's maps, drawn maps)."""
    def nb(x) -> int:
        return int(getattr(x, "nbytes", 0) or 0)

    p = getattr(a, "prepared", None)
    total = nb(getattr(getattr(a, "scan", None), "voxels", None))
    total += sum(nb(getattr(p, k, None)) for k in ("images", "masks", "original_masks"))
    for r in (getattr(a, "results", None) or {}).values():
        total += nb(getattr(r, "anomaly_map", None)) + nb(getattr(r, "pseudo_healthy", None))
        total += sum(nb(m) for m in (getattr(r, "extra_maps", None) or {}).values())
    return total + sum(nb(m) for m in (getattr(a, "_full_maps", None) or {}).values())


def _put(a: Analysis) -> str:
    key = secrets.token_hex(8)
    with _LOCK:
        _CACHE[key] = a
        while len(_CACHE) > MAX_CACHED:
            _CACHE.popitem(last=False)
        # the oldest go first; the newest (the one in view) always stays
        while len(_CACHE) > 1 and sum(analysis_bytes(x) for x in _CACHE.values()) > MAX_CACHED_BYTES:
            _CACHE.popitem(last=False)
    return key


def forget(key: str | None) -> None:
    """Drop a cached analysis (a preview, once the full one is cached)."""
    with _LOCK:
        _CACHE.pop(key or "", None)


def get_analysis(key: str | None) -> Analysis:
    with _LOCK:
        if not key or key not in _CACHE:
            raise AnomalyError("no scan loaded (or it expired): upload a scan or pick an example")
        _CACHE.move_to_end(key)
        return _CACHE[key]


def default_methods() -> list[str]:
    """Single-pass methods with checkpoints (slow, on-demand methods are excluded), the best first
    by their card's validation pixel AP (``validation_rank``), so the grid opens on its strongest rows."""
    return sorted((m for m in available_methods() if not method_class(m).on_demand), key=validation_rank)


def validation_rank(method: str) -> tuple[float, str]:
    """Sort key: minus the card's val_lesion pixel AP (methods without one last), then the name."""
    from anomaly.checkpoints import load_card
    from anomaly.methods import base

    try:
        v = load_card(base.CHECKPOINT_ROOT / method).get("validation") or {}
    except AnomalyError:
        v = {}
    ap = v.get("val_lesion_pixel_ap") if isinstance(v, dict) else None
    return (-float(ap) if _number(ap) else float("inf"), method)


def _paths(files) -> list[Path]:
    if files is None:
        raise AnomalyError("no file given")
    if isinstance(files, (str, Path)):
        files = [files]
    out = []
    for f in files:
        p = getattr(f, "name", None) or (f.get("path") if isinstance(f, dict) else f)
        out.append(Path(p))
    if not out:
        raise AnomalyError("no file given")
    return out


def load_upload(files, series_uid: str | None = None):
    """(scan, paths) of an upload: one or several files, a folder or a zip (typed errors)."""
    from anomaly.io import load_scan

    paths = _paths(files)
    return load_scan(paths if len(paths) > 1 else paths[0], series_uid=series_uid or None), paths


def newest_image(files) -> Path | None:
    """The last file of a multi-file upload when it stands alone: a single image of its own (NIfTI,
    PNG, JPEG, TIFF; not DICOM, whose files combine into a series) or an empty file. That is what a
    reader meant by dropping a new file on the page's box, which keeps the files listed before (a
    refused file among them, or another series, would otherwise decide what is shown)."""
    from anomaly.io.loader import sniff

    try:
        paths = _paths(files)
    except AnomalyError:
        return None
    if len(paths) < 2 or not paths[-1].is_file():
        return None
    try:
        if paths[-1].stat().st_size == 0:
            return paths[-1]  # answered as a lone empty file is ("... is empty"), not skipped unseen
        kind = sniff(paths[-1])
    except OSError:
        return None
    return paths[-1] if kind in ("nifti", "nifti-gz", "png", "jpeg", "tiff") else None


def preview_slice(scan, plane: str = "axial") -> int:
    """The slice a volume's first view shows: the middle one."""
    return plane_size(scan, plane) // 2


def _memo(scan, methods: list[str] | None, plane: str, seed: int, series_uid: str | None) -> tuple:
    """What makes two full analyses the same: scan content, methods, plane, seed, series."""
    return (scan.content_hash, tuple(sorted(set(methods or default_methods()))), plane, seed, series_uid or "")


def in_method_order(methods) -> list[str]:
    """``methods`` once each, in the app's order (best validation pixel AP first, ``validation_rank``),
    whatever order they were ticked in."""
    return sorted(dict.fromkeys(methods), key=validation_rank)


def cached_analysis(scan, methods: list[str] | None, plane: str = "axial", series_uid: str | None = None,
                    seed: int = 0) -> tuple[str, Analysis] | None:
    """The full analysis of the same scan content, methods and plane if one is cached (e.g. a clicked example)."""
    memo = _memo(scan, methods, plane, seed, series_uid)
    with _LOCK:
        for k, a in _CACHE.items():
            if getattr(a, "_memo", None) == memo and scan.content_hash:
                _CACHE.move_to_end(k)
                return k, a
    return None


def load_and_analyse(files, methods: list[str] | None = None, plane: str = "axial", series_uid: str | None = None,
                     seed: int = 0, progress=None, loaded=None, only=None) -> tuple[str, Analysis]:
    """Load a scan (one or several files, a folder, a zip) and analyse it; returns (key, analysis).

    ``loaded`` = (scan, paths) from ``load_upload`` skips loading; ``only`` scores just those
    slices (a preview, not cached for reuse)."""
    scan, paths = loaded if loaded is not None else load_upload(files, series_uid)
    plane = plane_of(scan, plane)
    methods = in_method_order(methods or default_methods())
    if not methods:
        raise AnomalyError("no trained method available: train one with `python -m anomaly.train ae --data DIR`")
    if only is not None:
        a = analyse(scan, methods, plane=plane, seed=seed, progress=progress, only=only)
        a.source_paths = paths
        return _put(a), a
    hit = cached_analysis(scan, methods, plane, series_uid, seed)
    if hit is not None:
        if paths:  # the same content, uploaded again: its files now (an earlier upload's may be gone)
            hit[1].source_paths = paths
        return hit
    memo = _memo(scan, methods, plane, seed, series_uid)
    a = analyse(scan, methods, plane=plane, seed=seed, progress=progress)
    a._memo = memo
    a.source_paths = paths  # for exports that must reference the source files (DICOM SEG)
    return _put(a), a


def open_stored(loaded, maps_file, content_hash: str | None = None) -> tuple[str, Analysis]:
    """A scan's analysis rebuilt from a batch run's stored maps (no model runs), cached like a
    full analysis of its methods; ``StaleResultsError`` when the scan or a checkpoint changed."""
    from anomaly.batch.maps import stored_analysis

    scan, paths = loaded
    a = stored_analysis(scan, maps_file, content_hash)
    a._memo = _memo(scan, list(a.results), a.plane, 0, None)
    a.source_paths = paths
    return _put(a), a


def plane_of(scan, plane: str) -> str:
    """The plane a scan is shown in: the one asked for, but a 2D image has only its own (axial)."""
    check_plane(plane)
    return plane if scan.is_volume else "axial"


def reanalyse_plane(key: str, plane: str, progress=None, only=None) -> tuple[str, Analysis]:
    """The loaded scan analysed in ``plane`` with the same methods (cached like an upload's
    analysis, so switching back is immediate); ``only`` scores just those slices (a preview)."""
    a = get_analysis(key)
    plane = plane_of(a.scan, plane)
    if a.plane == plane and only is None:
        return key, a
    return load_and_analyse(None, list(a.results), plane, _series_of(a), progress=progress,
                            loaded=(a.scan, getattr(a, "source_paths", None)), only=only)


def _series_of(a: Analysis) -> str | None:
    """The series an analysis was loaded from (part of its cache key, ``_memo``), or None."""
    return (getattr(a, "_memo", None) or ("",) * 5)[4] or None


def preview_plane(key: str, plane: str, index: int | None = None) -> tuple[str, Analysis, int] | None:
    """(key, analysis, slice) of slice ``index`` of ``plane`` (its middle one when None) scored alone,
    shown while the whole plane is scored; None when there is nothing to preview (same plane, one
    slice, already cached)."""
    a = get_analysis(key)
    target = plane_of(a.scan, plane)
    if (target == a.plane or plane_size(a.scan, target) < 2
            or cached_analysis(a.scan, list(a.results), target, _series_of(a)) is not None):
        return None
    mid = preview_slice(a.scan, target) if index is None else int(np.clip(int(index), 0, plane_size(a.scan, target) - 1))
    pkey, p = reanalyse_plane(key, target, only=[mid])
    return pkey, p, mid


def strongest_point(a: Analysis, index: int, methods: list[str] | None = None) -> tuple[float, float] | None:
    """(row, col) of the strongest point on slice ``index`` of the first shown method (validation
    order) whose calibrated map reaches its healthy threshold there inside the brain; None when no
    shown method flags anything on that slice (or it is not scored)."""
    for m in shown_methods(a, methods):
        r = a.results[m]
        if not r.valid[index] or r.calibration is None:
            continue
        cal = np.where(a.prepared.original_masks[index], a.full_map(m)[index], 0.0)
        if cal.max() >= 1.0:
            row, col = np.unravel_index(int(np.argmax(cal)), cal.shape)
            return float(row), float(col)
    return None


def same_point_in(key: str, index: int, zoom_centre, plane: str,
                  methods: list[str] | None = None) -> tuple[int, list[float]] | None:
    """Where the point in view goes in ``plane``: (slice index there, [row, col]) of the zoom centre
    on slice ``index`` of the loaded scan's plane, so that a plane switch keeps the reader on the same
    spot. With no zoom centre, the strongest point of the first shown method that flags something on
    that slice (``strongest_point``; with ``methods``), else the slice's middle. None for a 2D image
    (it has one plane)."""
    a = get_analysis(key)
    target = plane_of(a.scan, plane)
    if not a.scan.is_volume:
        return None
    i = int(np.clip(int(index), 0, a.n_slices - 1))
    h, w = a.scan.slice(i, a.plane).shape
    row, col = (_centre(zoom_centre) or (strongest_point(a, i, methods) if methods is not None else None)
                or ((h - 1) / 2, (w - 1) / 2))
    vox = plane_point_to_voxel(a.plane, i, row, col, a.scan.shape)
    j, r, c = voxel_to_plane_point(vox, target, a.scan.shape)
    return int(np.clip(j, 0, plane_size(a.scan, target) - 1)), [float(r), float(c)]


def render_view(key: str, index: int, preset: str = "auto", opacity: float = 0.5, threshold: float = 1.0,
                mode: str = "fill", methods: list[str] | None = None, extra_rows: bool = True,
                compare_with: str | None = None, zoom: float = 1.0, zoom_centre: tuple[float, float] | None = None):
    """(grid PIL image, score-table rows, (input, pseudo-healthy) pair for the compare slider: the
    reconstruction of ``compare_source``, both halves on its intensity scale; the windowed input
    twice when no shown method has one). ``extra_rows=False``: one grid row per method. ``zoom``
    (around ``zoom_centre``, a slice pixel; its centre when None) applies to every panel and to the
    compare pair alike."""
    a = get_analysis(key)
    index = int(np.clip(int(index), 0, a.n_slices - 1))
    shown = shown_methods(a, methods)
    zoom = float(zoom or 1.0)
    zoom_centre = _centre(zoom_centre)
    cfg = RenderConfig(alpha=float(opacity), threshold=float(threshold), mode=mode, zoom=zoom, zoom_centre=zoom_centre)
    grid = a.render(index, cfg, preset, shown, extra_rows=bool(extra_rows))
    # no volume score on the page: the highest slice score barely tells healthy from lesion scans (README)
    rows = {r["method"]: {k: v for k, v in r.items() if k != "volume score"}
            for r in a.score_table(index, float(threshold))}
    table = [rows[m] for m in shown]  # in the grid's order (a stored batch result lists its methods otherwise)
    img = a.display_u8(index, preset)
    ph = None
    source = compare_source(a, methods, compare_with)
    if source is not None:  # the input as the model saw it beside the reconstruction, one scale for both
        img, ph = (_model_scale_u8(a.prepared.slice_to_original(x[index], index))
                   for x in (a.prepared.images, a.results[source].pseudo_healthy))
    aspect = a.pixel_aspect()
    r0, r1, c0, c1 = zoom_window(img.shape[:2], zoom, zoom_centre)
    img = np.ascontiguousarray(img[r0:r1, c0:c1])
    ph = None if ph is None else np.ascontiguousarray(ph[r0:r1, c0:c1])
    return grid, table, (square_pixels(img, aspect), square_pixels(ph if ph is not None else img, aspect))


def _model_scale_u8(model_values: np.ndarray) -> np.ndarray:
    """Model-space intensities (normalised slices, 0 to about 1) as 8-bit grey, 1.2 as white."""
    return (np.clip(model_values / 1.2, 0, 1) * 255).astype(np.uint8)


def _centre(value) -> tuple[float, float] | None:
    """A zoom centre (row, col) from the app's state (a list after a round trip), or None."""
    try:
        r, c = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (r, c) if np.isfinite(r) and np.isfinite(c) else None


def clicked_pixel(key: str, x: float, y: float, zoom: float = 1.0, zoom_centre=None) -> tuple[int, int] | None:
    """The slice pixel (row, col) under a click at (x, y) on the grid image as it was drawn (with
    ``zoom`` around ``zoom_centre``); None off the pictures."""
    a = get_analysis(key)
    return panel_pixel(x, y, a.scan.slice(0, a.plane).shape, a.pixel_aspect(), float(zoom or 1.0), _centre(zoom_centre))


AUTO_COMPARE = "first shown"  # the compare slider's default: the first shown method with a reconstruction


def shown_methods(a: Analysis, methods: list[str] | None) -> list[str]:
    """The ticked methods that the analysis has (all of its methods for None; none for an empty list:
    the reader unticked every one)."""
    return in_method_order(a.results if methods is None else [m for m in methods if m in a.results])


def ensure_methods(key: str, methods: list[str] | None, progress=None) -> tuple[str, Analysis]:
    """(key, analysis) of the loaded scan with every ticked method scored: a method ticked after
    loading is scored on the same slices (``Analysis.with_methods``) and cached under a new key like
    an upload's analysis; the same key and analysis when nothing is missing or the scan is still being
    scored (its full analysis comes with the methods ticked at upload)."""
    a = get_analysis(key)
    missing = [m for m in (methods or []) if m not in a.results]
    if not missing or a.partial:
        return key, a
    wanted = in_method_order([*a.results, *missing])
    series = _series_of(a)
    hit = cached_analysis(a.scan, wanted, a.plane, series)
    if hit is not None:
        return hit
    n = len(missing)
    b = a.with_methods(missing, progress=None if progress is None else
                       (lambda i, name: progress((i, n), desc=f"{name}: {a.n_slices} slices")))
    b._memo = _memo(a.scan, wanted, a.plane, 0, series)
    b.source_paths = getattr(a, "source_paths", None)
    return _put(b), b


def compare_source(a: Analysis, methods: list[str] | None = None, compare_with: str | None = None) -> str | None:
    """Whose pseudo-healthy the compare slider shows: ``compare_with`` when it is shown and has a
    reconstruction, else the first shown method with one; None when none has."""
    with_recon = compare_candidates(a, methods)
    if compare_with in with_recon:  # AUTO_COMPARE is no method's name
        return compare_with
    return with_recon[0] if with_recon else None


def compare_candidates(a: Analysis, methods: list[str] | None) -> list[str]:
    """The shown methods that have a pseudo-healthy image, in the grid's order."""
    return [m for m in shown_methods(a, methods) if a.results[m].pseudo_healthy is not None]


def compare_choices(key: str | None, methods: list[str] | None, current: str | None = None
                    ) -> tuple[list[str], str | None]:
    """(choices, value) of the compare slider's method box: ``AUTO_COMPARE`` and the
    ``compare_candidates``; the choice stays unless its method is no longer offered. Every method
    and no change of value (None) before a scan is loaded."""
    try:
        a = get_analysis(key)
    except AnomalyError:
        return [AUTO_COMPARE, *default_methods()], None
    offered = compare_candidates(a, methods)
    return [AUTO_COMPARE, *offered], (current if current in offered else AUTO_COMPARE)


def compare_label(a: Analysis, methods: list[str] | None = None, compare_with: str | None = None) -> str:
    """The compare slider's caption: which method's pseudo-healthy it shows (and why, if not the one asked)."""
    source = compare_source(a, methods, compare_with)
    if source is None:
        if not shown_methods(a, methods):
            return "Compare: no method ticked (input on both sides)"
        return "Compare: no shown method has a pseudo-healthy image (input on both sides)"
    asked = compare_with not in (None, "", AUTO_COMPARE)
    why = ""
    if asked and compare_with != source:
        why = (f" ({compare_with} is not shown)" if compare_with not in shown_methods(a, methods)
               else f" ({compare_with} has no reconstruction)")
    # short: the label sits over the image's top edge (what "input" is here: "How to read this")
    return f"Compare: input (left) vs {source}'s pseudo-healthy (right){why}"


def square_pixels(u8: np.ndarray, aspect: float) -> np.ndarray:
    """An image resampled so that its pixels are square on screen (rows stretched by ``aspect``)."""
    if abs(aspect - 1.0) < 1e-3:
        return u8
    h, w = u8.shape[:2]
    return np.asarray(Image.fromarray(u8).resize((w, max(1, round(h * aspect))), Image.BILINEAR))


def score_curve_figure(a: Analysis, index: int | None = None, methods: list[str] | None = None):
    """Per-slice calibrated percentile, one line per shown method (matplotlib figure)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.0), dpi=90)
    xs = np.arange(a.n_slices)
    for name in shown_methods(a, methods):
        r = a.results[name]
        y = r.percentiles if r.calibration else r.scores / max(r.scores.max(), 1e-8) * 100
        y = np.where(r.valid, y, np.nan)
        ax.plot(xs, y, label=name, lw=1.4, marker="o" if a.partial or a.n_slices == 1 else None, ms=4)
    if a.plane == "axial" and a.ood.in_distribution:  # elsewhere no decision is made
        ax.axhline(95, color="grey", lw=0.8, ls="--", label="95th (decision)")
    if index is not None:  # black, not a method's colour, and in the legend
        ax.axvline(index, color="black", lw=1.2, ls=":", label="slice in view")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlim(-0.5, a.n_slices - 0.5)  # the whole scan, with or without curves (no method ticked)
    if a.n_slices == 1:  # one slice (a 2D image): one tick, not an axis from -0.04 to 0.04
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([0])
    ax.set_xlabel(f"{a.plane} slice")
    ax.set_ylabel("percentile vs healthy")
    ax.set_ylim(0, 101)
    # below the axes, in columns: it hides neither the curves nor the band above the 95th percentile,
    # and keeps a legible size where a phone shrinks the figure to half its width
    ax.tick_params(labelsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), fontsize=9, frameon=False,
                  ncol=min(len(handles), 5), columnspacing=1.2, handlelength=1.6)
    fig.tight_layout()
    plt.close(fig)
    return fig


def scan_summary(a: Analysis) -> str:
    s = a.scan
    lines = [f"**Scan**: {s.description or repr(s)}", f"study key `{a.study_key}`; plane {a.plane}, {a.n_slices} slice{'s' if a.n_slices != 1 else ''}; "
             + (f"loaded from {a.origin} in {a.seconds:.2f} s" if a.origin else f"scored in {a.seconds:.2f} s")]
    n_scored = int(np.sum(a.prepared.valid))
    if a.n_slices > 1 and n_scored < a.n_slices and not a.partial:  # which slices the scores leave out
        lines.append(f"{n_scored} of {a.n_slices} slices scored: the others hold too little brain (under "
                     f"{MIN_BRAIN_FRACTION:.0%} of the largest section's) or none; they get no score or decision")
    if s.notes:
        lines.append("Notes: " + "; ".join(s.notes))
    if not s.known_frame:
        lines.append("Orientation unknown (2D export): shown as stored, without orientation labels.")
    return "  \n".join(lines)  # markdown line breaks


def findings_rows(key: str, threshold: float = 1.0, methods: list[str] | None = None) -> list[dict]:
    """The findings table: every shown method's findings (in the Methods' order, best validation
    pixel AP first: ``FINDINGS_ORDER``), with the other methods that flag part of each
    (``Analysis.findings_across``)."""
    a = get_analysis(key)
    return a.findings_across(shown_methods(a, methods), float(threshold))


def api_summary(a: Analysis, index: int | None = None, threshold: float = 1.0) -> dict:
    """JSON for the API: per-method volume score, percentiles and slice curve; no identifiers."""
    idx = a.most_anomalous_slice() if index is None else int(index)
    out = {
        "study_key": a.study_key,
        "plane": a.plane,
        "n_slices": a.n_slices,
        "most_anomalous_slice": a.most_anomalous_slice(),
        "slice": idx,
        "slice_position": a.scan.slice_label(idx, a.plane) or None,
        "in_distribution": a.ood.in_distribution,
        "ood_reasons": a.ood.reasons,
        # what loading changed or left out (NaNs replaced, 4D: first volume, files ignored), as the page's summary says
        "notes": list(a.scan.notes),
        "methods": {},
    }
    for name, r in a.results.items():
        vp = r.volume_percentile  # the highest of n slices against the highest of n healthy ones
        vp = vp if np.isfinite(vp) else None
        ceiling = r.volume_percentile_ceiling
        out["methods"][name] = {
            "volume_score": r.volume_score,
            "volume_percentile": vp,
            "volume_percentile_ceiling": ceiling if np.isfinite(ceiling) else None,  # what m healthy slices can tell
            "slice_scores": [float(x) for x in r.scores],
            "slice_percentiles": [None if not np.isfinite(x) else float(x) for x in r.percentiles],
            "checkpoint_hash": r.checkpoint_hash,
            "ms_per_slice": r.ms_per_slice,
            "title": method_class(name).title,
        }
    out["score_table"] = a.score_table(idx, threshold)
    out["findings"] = a.findings_across(shown_methods(a, None), threshold)
    return out


def method_choices() -> list[tuple[str, str]]:
    """The Methods checkboxes: the single-pass methods (on-demand ones have their own panel)."""
    return [(f"{method_class(m).title} ({m})", m) for m in default_methods()]


def citations_markdown() -> str:
    """The methods panel: each method, its paper, and what its own card measured on the validation
    split with synthetic lesions, and where it was trained, so a reader weighs the columns."""
    from anomaly.checkpoints import load_card
    from anomaly.methods import base

    rows = ["| method | title | paper | validation: image AUROC / pixel AP | trained |", "|---|---|---|---|---|"]
    for m in available_methods():
        c = method_class(m)
        try:
            card = load_card(base.CHECKPOINT_ROOT / m)
        except AnomalyError:
            card = {}
        rows.append(f"| `{m}` | {c.title} | {c.paper} | {_validation_cell(card)} | {_trained_cell(card)} |")
    return "\n".join(rows) + (
        "\n\nValidation figures are each checkpoint card's own: the `val_lesion` split, half healthy slices and "
        "half with **synthetic** lesions on the template brains, scored like this page scores (0.5 = chance). "
        "They say how the methods compare, not how they will do on your scans; the README's benchmark has "
        "the test, held-out-anatomy and real-subject figures.")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _validation_cell(card: dict) -> str:
    v = card.get("validation") if isinstance(card.get("validation"), dict) else {}
    auc, ap, n = v.get("val_lesion_image_auroc"), v.get("val_lesion_pixel_ap"), v.get("val_lesion_slices")
    warn = " (calibrated on few healthy slices: coarse percentiles)" if card.get("calibration_warning") else ""
    if not (_number(auc) and _number(ap)):
        return "not measured" + warn
    return f"{auc:.2f} / {ap:.3f}" + (f" ({int(n)} slices)" if _number(n) else "") + warn


def _trained_cell(card: dict) -> str:
    steps, where = card.get("train_steps"), card.get("trained_on")
    parts = [f"{int(steps):,} steps" if _number(steps) and steps > 1 else "",  # zscore records 1 (a single fit)
             str(where).split(" (")[0] if isinstance(where, str) and where else ""]
    return ", ".join(p for p in parts if p) or "fitted without a training loop"


__all__ = ["load_and_analyse", "render_view", "get_analysis", "MultipleSeriesError", "api_summary", "findings_rows",
           "score_curve_figure", "scan_summary", "reanalyse_plane", "default_methods", "get_method"]


def on_demand_methods() -> list[str]:
    return [m for m in available_methods() if method_class(m).on_demand]


def on_demand_heading(names: list[str]) -> str:
    """The heading of the on-demand panel, naming the slow methods it offers by their titles."""
    if not names:
        return "Slow methods run on demand: none installed"
    return "Run on the slice in view: " + "; ".join(method_class(n).title for n in names)


def run_on_demand(key: str, index: int, method: str, preset: str = "auto", threshold: float = 1.0,
                  opacity: float = 0.5, mode: str = "both", seed: int = 0, progress=None, zoom: float = 1.0,
                  zoom_centre=None):
    """Run a slow method (diffusion) on the slice in view only; returns (grid image, score row). The
    grid shows the viewer's zoom window."""
    from anomaly.render import GridRow
    from anomaly.scoring import run_method

    a = get_analysis(key)
    i = int(np.clip(int(index), 0, a.n_slices - 1))
    p = a.prepared
    one = p.subset([i])
    m = get_method(method)
    r = run_method(m, one, seed=seed, progress=progress)
    img = a.display_u8(i, preset)
    ph = None
    if r.pseudo_healthy is not None:
        ph = a.model_u8(one.to_original(r.pseudo_healthy)[0], i, preset)
    pct = float(r.percentiles[0]) if r.calibration else float("nan")
    cap = f"slice {i}: score {sig_figs(r.scores[0]):g}" + (f", {percentile_text(pct)} percentile of healthy" if np.isfinite(pct) else "")
    rows = [GridRow(method, img, ph, one.to_original(r.calibrated_map)[0], cap, empty_note=m.no_reconstruction_note)]
    rows += extra_map_rows(method, img, r.extra_maps, one.masks, lambda m: one.to_original(m)[0], "slice")
    cfg = RenderConfig(alpha=float(opacity), threshold=float(threshold), mode=mode, zoom=float(zoom or 1.0),
                       zoom_centre=_centre(zoom_centre))
    grid = a.grid(rows, cfg, i, preset)
    return grid, {"method": method, "slice": i, "score": sig_figs(r.scores[0]),
                  "percentile vs healthy": None if not np.isfinite(pct) else round(pct, 1),
                  "ms": sig_figs(r.ms_per_slice), "seed": seed}


def usable_window(preset: str, key: str | None = None) -> tuple[str, str | None]:
    """(window to draw with, message): a window the app cannot read is drawn as 'auto', and the
    message says why, so that a typo warns instead of blanking the viewer; a Hounsfield preset on
    the loaded scan (``key``) when it is not CT says that it is drawn as 'auto'."""
    try:
        check_window(preset)
    except AnomalyError as e:
        return "auto", f"{e}. Showing the auto window."
    name = str(preset).strip().lower()
    if not key or (name not in PRESETS and name != "file"):
        return preset, None
    try:
        a = get_analysis(key)
    except AnomalyError:  # no scan loaded: nothing to say about its modality or stored window
        return preset, None
    if name in PRESETS and not is_ct(a.scan):
        what = "of unknown modality" if str(a.scan.modality).lower() == "unknown" else a.scan.modality
        return "auto", (f"'{preset}' is a CT window in Hounsfield units; this scan is {what}: "
                        "showing the auto window.")
    if name == "file" and not getattr(a.scan, "window", None):
        return "auto", "this file stores no display window (a DICOM WindowCenter/Width): showing the auto window."
    return preset, None
