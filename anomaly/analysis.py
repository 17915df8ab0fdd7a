"""Analysis of one scan by several methods: what the app, its API and batch scoring show.

``analyse(scan, methods)`` runs the one scoring path over every slice of a plane and
returns an ``Analysis`` that can render any slice, list findings in 3D and build the
score table, without re-running the models.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from anomaly.calibration import IMAGE_DECISION_PERCENTILE, percentile_text
from anomaly.errors import AnomalyError
from anomaly.keys import study_key
from anomaly.methods.base import get_method, method_class
from anomaly.ood import MIN_SCORED_SLICES, REFERENCE_METHODS, OODVerdict, image_reasons, verdict
from anomaly.preprocess import PreparedSlices, background_level, intensity_scale, preprocess_scan
from anomaly.render import GridRow, RenderConfig, compose_grid
from anomaly.scan import Scan
from anomaly.scoring import MethodResult, run_method
from anomaly.windowing import apply_window, window_for, window_text

# The slice the viewer opens on is chosen among the scored slices whose brain section is at least
# OPENING_MIN_SECTION of the scan's largest: at skull-base and vertex levels healthy anatomy gives
# the methods their largest residuals, so the highest score over every slice lands there on almost
# every volume. Among those, the summarising method (the consensus) decides where it is shown. On
# 20 validation lesion volumes (cohorts of seeds 1-10, never the test volumes;
# benchmarks/experiments/opening_slice.py) the slice opened lay inside the lesion in 0 with the
# earlier rule (mean percentile over all methods, every slice), 1 with that mean over the large
# sections, 6 with the consensus over them (a random candidate slice: 21%).
OPENING_MIN_SECTION = 0.5
FINDING_MIN_VOXELS = 10  # a finding is a connected region of at least this many voxels
OPENING_RULE = (f"highest healthy percentile of the consensus (else the mean over the methods), ties by score, among "
                f"slices with at least {OPENING_MIN_SECTION:.0%} of the largest brain section")


@dataclass
class Analysis:
    scan: Scan
    plane: str
    prepared: PreparedSlices
    results: dict[str, MethodResult]
    study_key: str
    ood: OODVerdict
    seconds: float
    _full_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    scored: np.ndarray | None = None  # slice indices scored so far (None: all; a preview scores a few)
    origin: str = ""  # where the results come from when not scored here (e.g. stored batch results)
    _display: dict = field(default_factory=dict, repr=False)  # windows and background, once per scan

    @property
    def partial(self) -> bool:
        return self.scored is not None

    @property
    def n_slices(self) -> int:
        return len(self.prepared)

    def slice_percentiles(self) -> dict[str, np.ndarray]:
        return {n: r.percentiles for n, r in self.results.items()}

    def opening_candidates(self) -> np.ndarray:
        """(S,) bool: scored slices whose brain section is at least ``OPENING_MIN_SECTION`` of the
        largest scored one (all scored slices if that leaves none)."""
        valid = np.asarray(self.prepared.valid, bool)
        if not valid.any():
            return valid
        area = np.asarray(self.prepared.original_masks).reshape(self.n_slices, -1).sum(1)
        cand = valid & (area >= OPENING_MIN_SECTION * area[valid].max())
        return cand if cand.any() else valid

    def most_anomalous_slice(self) -> int:
        """The slice the viewer opens on (``OPENING_RULE``): among ``opening_candidates``, the highest
        healthy percentile of the summarising method (the consensus) where it is shown, else the mean
        over the methods; ties (percentiles saturate at 100) broken by the (mean) score. Volume scores
        and each method's own top slice are unchanged (max over all slices)."""
        if not self.results:
            return self.n_slices // 2
        rs = [r for n, r in self.results.items() if method_class(n).summarises] or list(self.results.values())
        p = np.mean([np.nan_to_num(r.percentiles, nan=0.0) if r.calibration else np.zeros(self.n_slices) for r in rs], axis=0)
        s = np.mean([np.nan_to_num(r.scores, nan=0.0) for r in rs], axis=0)
        order = np.lexsort((s, p))  # ascending by percentile, then score
        order = order[self.opening_candidates()[order]]
        return int(order[-1]) if len(order) else self.n_slices // 2

    def full_map(self, method: str) -> np.ndarray:
        """Calibrated map of every slice at the input's pixel grid (S, H, W), cached."""
        if method not in self._full_maps:
            self._full_maps[method] = self.prepared.to_original(self.results[method].calibrated_map)
        return self._full_maps[method]

    @property
    def area_unit(self) -> str:
        """The unit of areas on a slice: mm², or pixels where the file holds no pixel size."""
        return "mm²" if self.scan.spacing_known else "px"

    def pixel_area_mm2(self) -> float:
        r, c = self.scan.slice_spacing(self.plane)
        return r * c

    def pixel_aspect(self) -> float:
        """Row / column pixel size (mm) of the plane in view (coronal or sagittal of thick slices: > 1)."""
        r, c = self.scan.slice_spacing(self.plane)
        return float(r / c) if c else 1.0

    def calibration_caveat(self) -> str:
        """What a percentile shown for this scan must be read with: "" for an axial, in-distribution
        scan; else why no decision is made (calibrated on axial slices, most healthy coronal slices
        would read "anomalous")."""
        if not self.ood.in_distribution:
            return " (not calibrated for this scan)"
        return " (axial-trained models)" if self.plane != "axial" else ""

    def score_table(self, index: int, threshold: float = 1.0) -> list[dict]:
        """Per method at slice ``index``: decision, percentile, area mm², score (brain-fill conditioned
        where calibrated so), the raw top-1% map mean, volume score, ms."""
        rows = []
        caveat = self.calibration_caveat()
        for name, r in self.results.items():
            pct = float(r.percentiles[index]) if r.calibration else float("nan")
            area = float((self.full_map(name)[index] >= threshold).sum() * self.pixel_area_mm2())
            if not r.valid[index]:
                decision = "not scored"
            elif not np.isfinite(pct):
                decision = "uncalibrated"
            elif caveat:  # out of distribution (the banner's warning), or a plane the models were not calibrated on
                decision = "no decision" + caveat
            else:
                decision = "anomalous" if pct >= IMAGE_DECISION_PERCENTILE else "normal"
            rows.append({  # what a reader needs first comes first (a narrow screen scrolls the rest)
                "method": name,
                "decision": decision,
                "percentile vs healthy": round(pct, 1) if np.isfinite(pct) else None,
                # a slice that is not scored has no score (its map is not read either)
                f"area above threshold ({self.area_unit})": round(area, 1) if r.valid[index] else None,
                "score": sig_figs(r.scores[index]) if r.valid[index] else None,
                "raw score (top 1% of map)": sig_figs(r.raw_scores[index]) if r.valid[index] else None,
                "volume score": sig_figs(r.volume_score),
                "ms per slice": sig_figs(r.ms_per_slice),
                "scored": bool(r.valid[index]),
            })
        return rows

    def _regions(self, method: str, threshold: float) -> np.ndarray:
        """(S, H, W) bool: ``method``'s map at or above ``threshold`` inside the brain of scored slices."""
        region = (self.full_map(method) >= threshold) & self.prepared.original_masks
        region[~np.asarray(self.prepared.valid, bool)] = False
        return region

    def findings(self, method: str, threshold: float = 1.0, min_voxels: int = FINDING_MIN_VOXELS,
                 others: dict[str, np.ndarray] | None = None) -> list[dict]:
        """Connected regions above threshold in 3D: volume (mL), extent along the slice, row and
        column axes (mm, bounding box), slice range, peak, centre. With ``others`` (method -> its
        ``_regions``; its own, when there, is used as it is), each finding also says which of them flag
        at least one of its voxels."""
        m = self.full_map(method)
        region = others[method] if others and method in others else self._regions(method, threshold)
        lab, n = ndimage.label(region)
        if n == 0:
            return []
        ds, dh, dw = self.scan.spacing
        plane_sp = {"axial": (ds, dh, dw), "coronal": (dh, ds, dw), "sagittal": (dw, ds, dh)}[self.plane]
        voxel_ml = float(np.prod(plane_sp)) / 1000.0 if self.scan.is_volume else float(np.prod(plane_sp[1:])) / 100.0
        if self.scan.spacing_known:
            size_key, extent_key = ("volume (mL)" if self.scan.is_volume else "area (cm²)"), "extent (mm)"
        else:  # an image file: no pixel size, so counts of pixels (voxels of a page stack)
            voxel_ml = 1.0
            size_key, extent_key = ("volume (voxels)" if self.scan.is_volume else "area (px)"), "extent (px)"
        idx = np.arange(1, n + 1)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        large = self.opening_candidates()
        # per other method, the labels of this method's regions it overlaps
        hit = {o: set(np.unique(lab[r & (lab > 0)]).tolist()) for o, r in (others or {}).items() if o != method}
        boxes = ndimage.find_objects(lab)  # each region's bounding box: its voxels found there, not in the volume
        out = []
        # per region, in its bounding box: ndimage.maximum over labels sorted the whole volume (a
        # 1024 x 1024 x 60 scan's findings took minutes)
        for k, size in zip(idx, sizes):
            if size < min_voxels:
                continue
            box = boxes[k - 1]
            own = lab[box] == k
            peak = m[box][own].max()
            zz, yy, xx = (c + b.start for c, b in zip(np.nonzero(own), box))
            extent = [(int(v.max()) - int(v.min()) + 1) * sp for v, sp in zip((zz, yy, xx), plane_sp)]
            f = {
                "method": method,
                size_key: round(size * voxel_ml, 3),
                extent_key: " x ".join(f"{e:.0f}" for e in (extent if self.scan.is_volume else extent[1:])),
                "slices": f"{zz.min()}-{zz.max()}",
                "peak (x threshold)": round(float(peak), 2),
                "centre slice": int(round(zz.mean())),
                "centre (row, col)": f"{int(yy.mean())}, {int(xx.mean())}",
                "brain section": "large" if large[int(round(zz.mean()))] else SMALL_SECTION,
            }
            if others is not None:
                agree = [o for o, labels in hit.items() if int(k) in labels]
                f["also flagged by"] = ", ".join(agree) if agree else "none"
            out.append(f)
        out.sort(key=lambda f: -f["peak (x threshold)"])
        return out

    def findings_across(self, methods: list[str] | None = None, threshold: float = 1.0) -> list[dict]:
        """Every shown method's findings in one list, each saying which of the other shown methods
        flag part of it (a finding that rests on one method reads "none"). Order (``FINDINGS_ORDER``):
        findings centred on slices of large brain section first (the opening slice's rule: at the
        skull base and vertex healthy anatomy gives every method its largest residuals); within each
        group, method by method in the order of ``methods`` (the app passes its Methods order, best
        validation pixel AP first), each method's strongest first (peak in multiples of its own
        healthy threshold)."""
        shown = [m for m in (list(self.results) if methods is None else methods) if m in self.results]
        # "also flagged by" names a method only where it has a finding itself (10 voxels or more)
        regions = {m: _without_small(self._regions(m, float(threshold)), FINDING_MIN_VOXELS) for m in shown}
        rows = [f for m in shown for f in self.findings(m, float(threshold), others=regions)]
        rows.sort(key=lambda f: (f["brain section"] != "large", shown.index(f["method"]), -f["peak (x threshold)"]))
        return rows

    def with_methods(self, methods: list[str], seed: int = 0, checkpoint_root=None, progress=None) -> Analysis:
        """This analysis with those of ``methods`` it lacks scored as well, on the same prepared
        slices (a method ticked after loading); the others' results are kept, not run again, and
        the out-of-distribution verdict (the scan's, not the methods') is kept. Itself when none is missing."""
        missing = [m for m in methods if m not in self.results]
        if not missing:
            return self
        if self.partial:
            raise AnomalyError("the scan is still being scored: tick the method again when it is done")
        t0 = time.perf_counter()
        results = {**self.results, **score_prepared(self.prepared, missing, seed, checkpoint_root, progress,
                                                     known=self.results)}
        # the verdict is the scan's, whichever methods are shown: kept as it is
        return replace(self, results=results, seconds=self.seconds + time.perf_counter() - t0,
                       _full_maps=dict(self._full_maps), _display=self._display)

    def window(self, preset: str = "auto") -> tuple[float, float]:
        """(centre, width) of ``preset`` for this scan (``windowing.window_for`` over the whole scan),
        the same on every slice, as on a workstation."""
        key = ("window", str(preset).strip().lower())
        if key not in self._display:
            self._display[key] = window_for(self.scan, preset)
        return self._display[key]

    def display_u8(self, index: int, preset: str = "auto") -> np.ndarray:
        return apply_window(self.scan.slice(index, self.plane), *self.window(preset))

    def pseudo_healthy_u8(self, method: str, index: int, preset: str = "auto") -> np.ndarray | None:
        """``method``'s pseudo-healthy slice taken back to the scan's intensities (the inverse of that
        slice's normalisation) and drawn in the input's window, so that the two compare as displayed."""
        r = self.results[method]
        if r.pseudo_healthy is None:
            return None
        return self.model_u8(self.prepared.slice_to_original(r.pseudo_healthy[index], index), index, preset)

    def model_u8(self, model_values: np.ndarray, index: int, preset: str = "auto") -> np.ndarray:
        """Model-space intensities of slice ``index``, already on its pixel grid, back in the scan's
        intensities (the inverse of the slice's normalisation) and drawn in the input's window."""
        if "background" not in self._display:
            v = self.scan.voxels
            self._display["background"] = background_level(v[np.isfinite(v)])
        bg = self._display["background"]
        scale = intensity_scale(self.scan.slice(index, self.plane), self.prepared.original_masks[index], bg)
        return apply_window(np.asarray(model_values, np.float32) * (scale or 0.0) + bg, *self.window(preset))

    def render(self, index: int, cfg: RenderConfig, preset: str = "auto", methods: list[str] | None = None,
               extra_rows: bool = True):
        """The grid image for slice ``index``: one row per method, then (``extra_rows``) the methods'
        extra maps (uncertainty, discrepancies, votes) below them all, so that the methods compare in
        the first rows rather than behind one method's extra maps."""
        index = int(np.clip(index, 0, self.n_slices - 1))
        img_u8 = self.display_u8(index, preset)
        rows, extras = [], []
        names = list(self.results) if methods is None else [m for m in methods if m in self.results]
        if not names:  # every method unticked: the input alone, saying so (not a blank image)
            rows.append(GridRow("no method ticked", img_u8, None, np.zeros(img_u8.shape[:2], np.float32),
                                "tick one under Methods to see its maps", empty_note=NO_METHOD_NOTE))
        for name in names:
            r = self.results[name]
            ph = self.pseudo_healthy_u8(name, index, preset)
            pct = r.percentiles[index]
            if not r.valid[index]:
                cap = "not scored: too little brain in this slice (or not scored yet)"
            elif np.isfinite(pct):
                cap = f"score {sig_figs(r.scores[index]):g}, {percentile_text(pct)} percentile of healthy" + self.calibration_caveat()
            else:
                cap = f"score {sig_figs(r.scores[index]):g} (uncalibrated)"
            rows.append(GridRow(name, img_u8, ph, self.full_map(name)[index], cap,
                                empty_note=method_class(name).no_reconstruction_note))
            if extra_rows:
                extras += extra_map_rows(name, img_u8, r.extra_maps, self.prepared.masks,
                                         lambda m: self.prepared.slice_to_original(m[index], index), "scan")
        rows += extras
        note = "calibrated" if all(r.calibration for r in self.results.values()) else "per-image max"
        return self.grid(rows, cfg, index, preset, scale_note=note)

    def grid(self, rows: list[GridRow], cfg: RenderConfig, index: int, preset: str = "auto",
             scale_note: str = "calibrated"):
        """``compose_grid`` of ``rows`` framed for slice ``index`` of this scan: orientation letters
        where the frame is known, pixel aspect, slice position and the window in force."""
        return compose_grid(rows, cfg, self.plane if self.scan.known_frame else None, aspect=self.pixel_aspect(),
                            scale_note=scale_note, slice_label=self.scan.slice_label(index, self.plane),
                            window_label=window_text(*self.window(preset)))


SMALL_SECTION = "small (skull base, vertex or edge)"


def sig_figs(x, digits: int = 3) -> float:
    """``x`` to ``digits`` significant figures, as a reader compares scores (2.27, not 2.26998)."""
    x = float(x)
    return float(f"{x:.{digits}g}") if np.isfinite(x) else x


def _without_small(region: np.ndarray, min_voxels: int) -> np.ndarray:
    """``region`` without its connected parts of fewer than ``min_voxels`` voxels."""
    lab, n = ndimage.label(region)
    if n == 0:
        return region
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]
# The findings list's order (``Analysis.findings_across``), chosen on 20 validation lesion volumes
# (cohorts of seeds 1-10, never the test split; benchmarks/experiments/findings_order.py): the first
# finding lay in the lesion in 7 (one of the first three in 9; 13 volumes had a finding in it) with
# the methods in validation order, against 3 (6) with the strongest peak first over all methods, the
# order until session 14, and 5 (6) with the findings that more methods agree on first.
FINDINGS_ORDER = "large brain section first, then method by method (best validation pixel AP first), strongest peak first"
NO_METHOD_NOTE = "no method ticked:\ntick one under Methods"


def extra_map_rows(method: str, img_u8: np.ndarray, extra_maps: dict[str, np.ndarray], masks: np.ndarray,
                   at_slice, scope: str) -> list[GridRow]:
    """Grid rows of ``method``'s extra maps (uncertainty, discrepancies, votes), titled for a reader
    (``extra_map_titles``) and not calibrated: on the method's fixed scale where it declares one
    (``extra_map_scales``), else 1.0 = the map's 99.5th percentile inside ``masks`` (the brain of
    this ``scope``: "scan" or "slice"). ``at_slice`` takes a model-space stack to the slice shown,
    in the image's own pixel grid."""
    cls = method_class(method)
    brain = np.asarray(masks, bool)
    rows = []
    for extra, emap in extra_maps.items():
        if extra in cls.extra_map_scales:
            ref, scale = 1.0, cls.extra_map_scales[extra]
        else:
            ref = float(np.percentile(emap[brain], 99.5)) if brain.any() else 1.0
            scale = f"per-{scope} scale (1.0 = its 99.5th percentile in this {scope})"
        title = cls.extra_map_titles.get(extra, extra.replace("_", " "))
        rows.append(GridRow(f"{method} · {title}", img_u8, None, at_slice(emap) / max(ref, 1e-8),
                            f"{scale}, not calibrated", empty_note=f"{title}:\nan extra map of {method}",
                            map_title=title, calibrated=False))
    return rows


def _embed(r: MethodResult, idx: np.ndarray, n: int) -> MethodResult:
    """A result on the slices ``idx`` placed in an ``n``-slice result (others unscored: valid False)."""
    def full(a):
        if a is None:
            return None
        out = np.zeros((n, *a.shape[1:]), a.dtype)
        out[idx] = a
        return out

    valid = np.zeros(n, bool)
    valid[idx] = r.valid
    return MethodResult(r.method, full(r.pseudo_healthy), full(r.anomaly_map), full(np.asarray(r.scores, np.float64)),
                        valid, r.ms_per_slice, r.checkpoint_hash, r.calibration,
                        {k: full(v) for k, v in r.extra_maps.items()},
                        raw_scores=full(np.asarray(r.raw_scores, np.float64)))


def score_prepared(prepared: PreparedSlices, methods: list[str], seed: int = 0, checkpoint_root=None,
                   progress=None, known: dict[str, MethodResult] | None = None) -> dict[str, MethodResult]:
    """Every method on ``prepared`` through ``run_method``; a consensus reuses its members' results
    when they are among ``methods`` or in ``known`` (results already scored on ``prepared``), as the
    app does. ``progress(i, name)`` before each method."""
    results: dict[str, MethodResult] = dict(known or {})
    order = sorted(methods, key=lambda n: method_class(n).summarises)  # a summary after its members
    for i, name in enumerate(order):
        m = get_method(name, None if checkpoint_root is None else checkpoint_root / name)
        if progress is not None:
            progress(i, name)
        members = getattr(m, "members", None)
        if m.summarises and members and all(x in results for x in members):
            from anomaly.methods.consensus import from_member_results

            results[name] = from_member_results(m, prepared, results)
        else:
            results[name] = run_method(m, prepared, seed=seed)
    return {n: results[n] for n in methods}


def scan_study_key(scan: Scan) -> str:
    """The salted study key of a scan: from its StudyInstanceUID, else from its content."""
    return study_key(scan.study_uid or scan.content_hash or str(hash(scan.voxels.tobytes())))


def analyse(scan: Scan, methods: list[str], plane: str = "axial", seed: int = 0, checkpoint_root=None,
            progress=None, only=None) -> Analysis:
    """Run ``methods`` over every slice of ``scan`` in ``plane`` through the one scoring path.

    With ``only`` (slice indices) just those slices are scored, the rest stay unscored
    (``valid`` False): the app's first view of a volume, shown while the rest is scored.
    """
    t0 = time.perf_counter()
    prepared_all = preprocess_scan(scan, plane)
    n_all = len(prepared_all)
    idx = None if only is None else np.unique(np.clip(np.asarray(only, int), 0, n_all - 1))
    prepared = prepared_all if idx is None else prepared_all.subset(idx)
    results = score_prepared(prepared, methods, seed, checkpoint_root,
                             None if progress is None else
                             (lambda i, name: progress((i, len(methods)), desc=f"{name}: {len(prepared)} slices")))
    if idx is not None:
        results = {n: _embed(r, idx, n_all) for n, r in results.items()}
        prepared = prepared_all
    key = scan_study_key(scan)
    scored_valid = prepared.valid if idx is None else np.isin(np.arange(n_all), idx) & prepared.valid
    v = scan_verdict(scan, plane, prepared, results, scored_valid, seed, checkpoint_root)
    return Analysis(scan, plane, prepared, results, key, v, time.perf_counter() - t0, scored=idx)


_AXIAL_SCORE_REASONS: "OrderedDict[tuple, list[str]]" = OrderedDict()  # scan content -> its score check
_AXIAL_SCORE_LOCK = threading.Lock()


def scan_verdict(scan: Scan, plane: str, prepared: PreparedSlices, results: dict[str, MethodResult],
                 valid: np.ndarray, seed: int = 0, checkpoint_root=None, run_missing: bool = True) -> OODVerdict:
    """The out-of-distribution verdict of a scan: one per scan, whichever methods are shown and
    whichever plane is in view. Metadata and pixels (``prepared``, this plane's slices) as
    ``anomaly.ood.verdict``; its score check reads the ``REFERENCE_METHODS``' percentiles on the
    axial plane, where the models were calibrated: from ``results`` where they are there, else run
    here and kept out of the results (``run_missing``; a reference model without a checkpoint is
    left out), and remembered per scan content, so that another plane of the scan says the same."""
    base = verdict(scan, None, None, prepared)
    reasons = base.reasons + _score_reasons(scan, plane, prepared, results, valid, seed, checkpoint_root, run_missing)
    return OODVerdict(not reasons, reasons)


def _score_reasons(scan, plane, prepared, results, valid, seed, checkpoint_root, run_missing) -> list[str]:
    from anomaly.methods import base  # the checkpoints in use (tests and users swap the folder)

    root = str(checkpoint_root or base.CHECKPOINT_ROOT)
    memo = (scan.content_hash, root, seed) if scan.content_hash else None
    with _AXIAL_SCORE_LOCK:
        known = None if memo is None else _AXIAL_SCORE_REASONS.get(memo)
    if known is not None:
        return list(known)
    if plane != "axial":
        # not for a plane's first preview slice (it would wait for the axial check); its full analysis runs it
        if not (run_missing and scan.is_volume) or int(np.sum(valid)) < MIN_SCORED_SLICES:
            return []
        plane, results = "axial", {}
        prepared = preprocess_scan(scan, "axial")
        valid = prepared.valid
    if int(np.sum(valid)) < MIN_SCORED_SLICES:  # one image, or a volume's first preview slice
        return []
    pct = {n: results[n].percentiles for n in REFERENCE_METHODS if n in results and results[n].calibration}
    missing = [n for n in REFERENCE_METHODS if n not in results]
    v = np.asarray(valid, bool)
    if missing and run_missing:
        sub = prepared.subset(np.flatnonzero(v))
        for n in missing:
            try:
                r = score_prepared(sub, [n], seed, checkpoint_root)[n]
            except AnomalyError:  # no checkpoint for it here (a user's own training): left out
                continue
            if r.calibration:
                full = np.full(len(prepared), np.nan)
                full[v] = r.percentiles
                pct[n] = full
    reasons = image_reasons(pct, v)
    if memo is not None and (run_missing or not missing):
        with _AXIAL_SCORE_LOCK:
            _AXIAL_SCORE_REASONS[memo] = list(reasons)
            while len(_AXIAL_SCORE_REASONS) > 64:
                _AXIAL_SCORE_REASONS.popitem(last=False)
    return reasons
