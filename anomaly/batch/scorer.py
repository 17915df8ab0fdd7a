"""One study -> one result row, through ``anomaly.analysis.analyse`` (the app's scoring path).

``score_study`` is a plain function; ``StudyScorer`` is the callable class that Ray Data runs in
each actor: it loads every checkpoint once, then scores batches of items (``{"source", "files",
"kind"}``) and returns a ``pyarrow.Table`` with ``result_schema(methods)``. Rows hold no patient
identifier: the study is known by its salted study key and its content hash.
"""

from __future__ import annotations

import io
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from anomaly.batch.discovery import item_files
from anomaly.errors import AnomalyError
from anomaly.keys import SALT_ENV, study_key
from anomaly.io.loader import files_hash

THUMB = 96  # study thumbnail side (pixels)
METHOD_THUMB = 64  # per-method thumbnails: 9 methods x 10,000 studies stay a few hundred MB
PER_METHOD = {
    "score": pa.float64(),  # volume score (max over scored slices)
    "percentile": pa.float64(),  # its percentile vs healthy validation slices (NaN if uncalibrated)
    "top_slice": pa.int32(),  # the method's highest-scoring slice
    "top_score": pa.float64(),
    "curve": pa.list_(pa.float64()),  # score of every slice (MethodResult.scores)
    "pct_curve": pa.list_(pa.float64()),  # percentile of every slice
    "checkpoint_hash": pa.string(),
    "ms_per_slice": pa.float64(),
    "thumbnail": pa.binary(),  # PNG, top slice with the calibrated overlay
}
COMMON = [
    ("content_hash", pa.string()), ("study_key", pa.string()), ("source", pa.string()), ("kind", pa.string()),
    ("status", pa.string()), ("error_type", pa.string()), ("error", pa.string()),
    ("modality", pa.string()), ("shape", pa.list_(pa.int32())), ("spacing", pa.list_(pa.float64())),
    ("plane", pa.string()), ("n_slices", pa.int32()), ("methods", pa.list_(pa.string())),
    ("ood", pa.bool_()), ("ood_reasons", pa.string()),
    ("notes", pa.string()),  # what loading changed or left out (NaNs replaced, 4D: first volume, files ignored)
    ("top_slice", pa.int32()), ("thumbnail", pa.binary()),
    ("maps", pa.string()), ("maps_bytes", pa.int64()),  # stored maps (``anomaly.batch.maps``), relative path
    ("seconds_load", pa.float64()), ("seconds_analyse", pa.float64()), ("seconds_total", pa.float64()),
    ("finished_at", pa.string()), ("host", pa.string()),
]


def col(method: str, field: str) -> str:
    """Column name of a per-method field, e.g. ``ae__score``."""
    return f"{method}__{field}"


def result_schema(methods: list[str]) -> pa.Schema:
    fields = [pa.field(n, t) for n, t in COMMON]
    for m in methods:
        fields += [pa.field(col(m, f), t) for f, t in PER_METHOD.items()]
    return pa.schema(fields)


def study_hash(it: dict) -> str:
    """Content hash of a study's files (``anomaly.io.loader.files_hash``, as the app's ``Scan.content_hash``)."""
    return files_hash(item_files(it))


def thumbnail_png(a, index: int, cal_map: np.ndarray, size: int = THUMB) -> bytes:
    """Slice ``index`` in the auto window with the calibrated map overlaid, fitted in ``size`` x ``size``."""
    from PIL import Image

    from anomaly.render import RenderConfig, overlay_rgb

    rgb = overlay_rgb(a.display_u8(index), cal_map, RenderConfig(alpha=0.5, threshold=1.0, mode="both"))
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _cal_slice(a, method: str, index: int) -> np.ndarray:
    r = a.results[method]
    return a.prepared.slice_to_original(r.calibrated_map[index], index)


def _fill(row: dict, a) -> None:
    """Fill ``row`` from an ``Analysis``."""
    scan = a.scan
    row.update(study_key=a.study_key, modality=scan.modality, shape=list(scan.shape),
               spacing=[float(s) for s in scan.spacing], n_slices=a.n_slices, ood=not a.ood.in_distribution,
               ood_reasons="; ".join(a.ood.reasons), notes="; ".join(scan.notes))
    top = a.most_anomalous_slice()
    row["top_slice"] = top
    maps = []
    for m, r in a.results.items():
        t = r.most_anomalous_slice
        pct = r.percentiles
        vol_pct = r.volume_percentile  # the same scan-level percentile as the API's
        row.update({col(m, "score"): float(r.volume_score), col(m, "percentile"): vol_pct,
                    col(m, "top_slice"): t, col(m, "top_score"): float(r.scores[t]),
                    col(m, "curve"): [float(x) for x in r.scores], col(m, "pct_curve"): [float(x) for x in pct],
                    col(m, "checkpoint_hash"): r.checkpoint_hash, col(m, "ms_per_slice"): float(r.ms_per_slice),
                    col(m, "thumbnail"): thumbnail_png(a, t, _cal_slice(a, m, t), METHOD_THUMB)})
        maps.append(_cal_slice(a, m, top))
    row["thumbnail"] = thumbnail_png(a, top, np.max(maps, axis=0) if maps else np.zeros_like(a.display_u8(top), float))


def score_study(it: dict, methods: list[str], checkpoint_root: Path | None = None, plane: str = "axial",
                content_hash: str | None = None, out: Path | str | None = None) -> dict:
    """The result row of one study; a failure is a row with ``status='failed'``, never an exception.

    With ``out`` (the results folder) the study's maps are stored there (``anomaly.batch.maps``)
    so that the worklist opens it without scoring it again."""
    from anomaly.analysis import analyse
    from anomaly.io import load_scan

    t0 = time.perf_counter()
    row: dict = {"source": it["source"], "kind": it["kind"], "plane": plane, "methods": list(methods),
                 "status": "failed", "host": socket.gethostname()}
    t_load = t_an = 0.0
    try:
        h = content_hash or study_hash(it)
        row["content_hash"] = h
        row["study_key"] = study_key(h)
        files = item_files(it)
        scan = load_scan(files if len(files) > 1 else files[0])
        t_load = time.perf_counter() - t0
        a = analyse(scan, methods, plane=plane, checkpoint_root=checkpoint_root)
        t_an = time.perf_counter() - t0 - t_load
        _fill(row, a)
        if out is not None:
            from anomaly.batch.maps import MAPS_DIR, maps_path, save_maps

            row["maps_bytes"] = save_maps(a, maps_path(out, h))
            row["maps"] = f"{MAPS_DIR}/{h}.npz"
        row.update(status="ok")
    except AnomalyError as e:
        row.update(error_type=type(e).__name__, error=str(e))
    except OSError as e:  # a missing or unreadable path: the typed load error, no path in the message
        row.update(error_type="ScanLoadError", error=f"{Path(it['source']).name}: {e.strerror or 'cannot read'}")
    except Exception as e:  # noqa: BLE001 - one bad study never stops the run
        row.update(error_type=type(e).__name__, error=f"internal error while scoring: {type(e).__name__}")
    if "content_hash" not in row:
        row["content_hash"] = "unreadable-" + study_key(it["source"])[3:]
        row["study_key"] = study_key(row["content_hash"])
    row.update(seconds_load=t_load, seconds_analyse=t_an, seconds_total=time.perf_counter() - t0,
               finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return row


def rows_table(rows: list[dict], methods: list[str]) -> pa.Table:
    schema = result_schema(methods)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


class StudyScorer:
    """Ray Data callable: loads the checkpoints once per actor, then scores batches of items.

    Studies whose content hash is in ``done`` give no row (resume); with ``maps_out`` (the results
    folder) each study's maps are stored there."""

    def __init__(self, methods: list[str], checkpoint_root: str | None = None, plane: str = "axial",
                 salt: str | None = None, done: frozenset[str] | set[str] = frozenset(), threads: int = 1,
                 maps_out: str | None = None):
        import torch

        from anomaly.methods.base import get_method

        if salt:
            os.environ[SALT_ENV] = salt
        torch.set_num_threads(max(1, int(threads)))
        self.methods = list(methods)
        self.root = Path(checkpoint_root) if checkpoint_root else None
        self.plane = plane
        self.done = frozenset(done)
        self.maps_out = maps_out  # results folder to store maps in (None: no maps)
        for m in self.methods:  # load every checkpoint once, here
            get_method(m, None if self.root is None else self.root / m)

    def __call__(self, batch) -> pa.Table:
        items = batch.to_dict("records") if hasattr(batch, "to_dict") else [
            dict(zip(batch, vals)) for vals in zip(*batch.values())]
        rows = []
        for it in items:
            try:
                h = study_hash(it)
            except OSError:
                h = None
            if h is not None and h in self.done:
                continue
            rows.append(score_study(it, self.methods, self.root, self.plane, content_hash=h, out=self.maps_out))
        return rows_table(rows, self.methods)
