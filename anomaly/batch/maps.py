"""Stored maps of a batch result: written by the scorer next to the Parquet parts, read back by
the worklist to open a study in the review view without scoring it again.

One compressed ``.npz`` per study, ``RESULTS_DIR/maps/<content_hash>.npz``, in model space
(slices x 128 x 128), per method:

* the calibrated map as uint8 in steps of 1/``STEP`` = 1/32 of the healthy threshold (rounded to
  the nearest step, so areas above a threshold are unbiased; values above 255/32 ~ 8x are capped),
  with the factor that turns it back into raw map units;
* the pseudo-healthy image as uint8 of the display scale (``clip(x / 1.2, 0, 1)``, as rendered);
* extra maps (e.g. DDAD's discrepancies) as uint8 relative to their 99.5th percentile in the scan;
* the slice scores (float64, exact), the valid slices, the checkpoint hash and calibration.

About 60-70 KB per slice for the 8 single-pass methods (measured: a 90-slice volume 5.3 MB). ``stored_analysis`` rebuilds the
app's ``Analysis`` from it (preprocessing runs again: cheap, deterministic; no model runs) and
refuses, with ``StaleResultsError``, when the scan's content or a checkpoint changed since.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from anomaly.errors import StaleResultsError

FORMAT = 2  # 2: consensus votes stored as the share of members (0-1), not a count
STEP = 32  # calibrated-map quantisation: 1/32 of the healthy threshold
PH_SCALE = 1.2  # pseudo-healthy display scale (as ``Analysis.render``)
MAPS_DIR = "maps"


def maps_path(out: Path | str, content_hash: str) -> Path:
    """Where the maps of the study with ``content_hash`` live in a results folder."""
    return Path(out) / MAPS_DIR / f"{content_hash}.npz"


def _q(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.nan_to_num(np.asarray(x, np.float32)) * STEP, 0, 255)).astype(np.uint8)


def _calibration_id(cal) -> list | None:
    return None if cal is None else [float(cal.pixel_threshold), [float(v) for v in cal.score_quantiles]]


def save_maps(a, path: Path | str) -> int:
    """Write the maps of ``a`` (an ``anomaly.analysis.Analysis``) to ``path`` atomically; returns bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = np.asarray(a.prepared.masks, bool)
    arrays: dict[str, np.ndarray] = {"valid": np.asarray(a.prepared.valid, bool)}
    meta = {"format": FORMAT, "step": STEP, "plane": a.plane, "n_slices": a.n_slices, "study_key": a.study_key,
            "content_hash": a.scan.content_hash, "methods": {}, "ood_reasons": list(a.ood.reasons)}
    for name, r in a.results.items():
        cal = r.calibrated_map
        amap = np.asarray(r.anomaly_map, np.float32)
        flat_c = cal.reshape(len(cal), -1).max(1)
        flat_a = amap.reshape(len(amap), -1).max(1)
        scale = (np.full(len(cal), r.calibration.pixel_threshold) if r.calibration
                 else np.where(flat_c > 0, flat_a / np.maximum(flat_c, 1e-12), 1.0))
        arrays[f"{name}.map"] = _q(cal)
        arrays[f"{name}.scale"] = np.asarray(scale, np.float64)
        arrays[f"{name}.scores"] = np.asarray(r.scores, np.float64)
        arrays[f"{name}.raw_scores"] = np.asarray(r.raw_scores, np.float64)
        arrays[f"{name}.valid"] = np.asarray(r.valid, bool)
        if r.pseudo_healthy is not None:
            arrays[f"{name}.ph"] = np.round(np.clip(np.nan_to_num(r.pseudo_healthy) / PH_SCALE, 0, 1) * 255).astype(np.uint8)
        refs = {}
        for extra, emap in r.extra_maps.items():
            ref = float(np.percentile(emap[masks], 99.5)) if masks.any() else 1.0
            ref = max(ref, 1e-8)
            arrays[f"{name}.x.{extra}"] = _q(emap / ref)
            refs[extra] = ref
        meta["methods"][name] = {"checkpoint_hash": r.checkpoint_hash, "ms_per_slice": float(r.ms_per_slice),
                                 "calibration": _calibration_id(r.calibration), "extras": refs}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path.stat().st_size


def stored_analysis(scan, path: Path | str, content_hash: str | None = None, checkpoint_root: Path | None = None):
    """The ``Analysis`` of ``scan`` rebuilt from stored maps (no model runs).

    Raises ``StaleResultsError`` when the maps are missing or unreadable, the scan's content
    differs from ``content_hash`` (or from the one scored), or a method's checkpoint or
    calibration changed since the batch run."""
    from anomaly.analysis import Analysis, scan_study_key, scan_verdict
    from anomaly.errors import AnomalyError
    from anomaly.methods.base import get_method
    from anomaly.ood import OODVerdict
    from anomaly.preprocess import preprocess_scan
    from anomaly.scoring import MethodResult

    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise StaleResultsError("no stored maps for this study (scored with --no-maps, or moved)")
    try:
        z = np.load(path)
        meta = json.loads(bytes(z["meta"]).decode())
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise StaleResultsError(f"stored maps unreadable ({type(e).__name__})") from None
    with z:
        if meta.get("format") != FORMAT:
            raise StaleResultsError(f"stored maps of format {meta.get('format')}, this version reads {FORMAT}")
        want = content_hash or meta.get("content_hash")
        if not scan.content_hash or scan.content_hash != want:
            raise StaleResultsError("the scan file changed since it was scored")
        results = {}
        try:
            step = float(meta["step"])
            for name, m in meta["methods"].items():
                try:
                    method = get_method(name, None if checkpoint_root is None else Path(checkpoint_root) / name)
                except AnomalyError as e:
                    raise StaleResultsError(f"method {name} of the batch run is not available here ({e})") from None
                if (method.checkpoint_hash != m["checkpoint_hash"]
                        or _calibration_id(method.calibration) != m["calibration"]):
                    raise StaleResultsError(f"the {name} checkpoint or its calibration changed since the batch run")
                cal_map = z[f"{name}.map"].astype(np.float32) / step
                amap = cal_map * z[f"{name}.scale"].astype(np.float32)[:, None, None]
                ph = (z[f"{name}.ph"].astype(np.float32) / 255 * PH_SCALE) if f"{name}.ph" in z else None
                extras = {x: z[f"{name}.x.{x}"].astype(np.float32) / step * ref for x, ref in m["extras"].items()}
                raw = z[f"{name}.raw_scores"] if f"{name}.raw_scores" in z else None  # older files: none
                results[name] = MethodResult(name, ph, amap, z[f"{name}.scores"], z[f"{name}.valid"],
                                             m["ms_per_slice"], m["checkpoint_hash"], method.calibration, extras,
                                             raw_scores=raw)
            valid = z["valid"]
        except (KeyError, TypeError, ValueError, AttributeError, OSError, EOFError, zipfile.BadZipFile,
                zlib.error) as e:  # a foreign or damaged maps file
            raise StaleResultsError(f"stored maps incomplete ({type(e).__name__})") from None
    prepared = preprocess_scan(scan, meta["plane"])
    if len(prepared) != meta["n_slices"] or not np.array_equal(np.asarray(prepared.valid, bool), valid):
        raise StaleResultsError("preprocessing differs from the batch run's (another version of the project)")
    key = scan_study_key(scan)
    if isinstance(meta.get("ood_reasons"), list):  # the verdict of the batch run (its reference models)
        v = OODVerdict(not meta["ood_reasons"], [str(x) for x in meta["ood_reasons"]])
    else:  # an older file: from the stored methods alone
        v = scan_verdict(scan, meta["plane"], prepared, results, prepared.valid, run_missing=False)
    return Analysis(scan, meta["plane"], prepared, results, key, v, time.perf_counter() - t0,
                    origin="stored batch results (not rescored)")
