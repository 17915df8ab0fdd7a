"""``python -m anomaly.evaluate``: image- and pixel-level metrics of methods on a data-set folder.

    python -m anomaly.evaluate --data DIR --methods all|NAME[,NAME] --out OUT
        [--val-data VALDIR] [--checkpoints CKPT_ROOT] [--max-slices N] [--seed S]
        [--bootstrap 1000] [--reference ae|NAME|none] [--exclude-invalid] [--no-progress]

DIR is any folder in the data-set format (``anomaly.data.folder``). Every image/volume goes
through ``anomaly.preprocess.preprocess_slices`` (all slices of one file together) and each
method through ``anomaly.scoring.run_method`` (the one scoring path, with its shared
post-processing). Maps are brought back to each image's own pixel grid with
``PreparedSlices.to_original`` and compared with the lesion mask at the mask's size.

* Image level (2D samples with a known label): AUROC, AP, sensitivity at 95% specificity,
  each with a percentile-bootstrap 95% CI (resampling slices).
* Pixel level (samples that have a mask file, lesion or empty, and normal samples without one,
  as an empty mask: ``pixel_truth``; pixels inside the brain mask
  ``PreparedSlices.original_masks`` only): AUROC, AP, best Dice over 100 thresholds (an
  optimistic bound: threshold chosen on the test data) and Dice at the method's healthy
  validation threshold (its calibration pixel threshold, or recomputed from ``--val-data``).
* Slices that preprocessing marks as not ``valid`` (too little brain) are evaluated with the
  score the method gives them, unless ``--exclude-invalid``; ``metrics.json`` says which.
* Breakdowns by ``kind``, size bin and lesions >= 10 mm (labels.csv ``kind``, ``size_mm``), and
  where given by the in-slice extent (``slice_extent_mm``) and the lesion contrast
  (``lesion_contrast``: all lesions and lesions >= 10 mm).
* Paired differences against a reference method (``--reference``, default ``ae`` when it is
  evaluated): image AUROC, image AP and pixel AP of each method minus the reference's, with a
  paired bootstrap CI (the same resampled slices for both), so "does X beat the plain AE?" is
  answered by the CI of the difference, not by two overlapping marginal CIs.

Writes OUT/metrics.json (schema: docs/metrics_schema.md), OUT/metrics.md, OUT/scores.csv (every
sample's image score per method), OUT/roc.png, OUT/pr.png, OUT/roc_ge10mm.png (when lesions
>= 10 mm exist) and OUT/montage_METHOD.png.
Bad input (missing/empty folder, unreadable file, mask of the wrong size, ...) ends with
``error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import functools
import heapq
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from anomaly import metrics as M
from anomaly.calibration import brain_fill, fit_calibration
from anomaly.data.folder import Item, Sample, item_samples, read_folder, read_image
from anomaly.errors import AnomalyError, CheckpointError, DatasetError, InvalidRequestError
from anomaly.methods.base import AnomalyMethod, get_method, resolve_methods

if TYPE_CHECKING:
    from anomaly.preprocess import PreparedSlices

# anomaly.preprocess / anomaly.scoring (torch) are imported where used, so that bad input
# and --help are answered without loading torch.

SCHEMA_VERSION = 2
PIXEL_REGION = ("inside the brain mask (PreparedSlices.original_masks) of samples with a mask file and of "
                "normal samples without one (an empty mask), at the image's size")
POSTPROCESSING = "brain mask + median filter 5x5 (anomaly.scoring)"
SPECIFICITY = 0.95
LESION_IN_BRAIN_WARNING = 0.9  # metrics.md warns below this share of lesion pixels inside the brain masks
N_DICE_THRESHOLDS = 100
MONTAGE_K = 4
SIZE_BINS = (("<10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), (">=20 mm", 20.0, math.inf))
# labels.csv size columns: the lesion's largest 3D diameter, and its largest diameter within the slice
SIZE_COLUMNS = ("size_mm", "slice_extent_mm")
# labels.csv conspicuity column (the cohort writes it: anomaly.data.cohort.lesion_contrast) and its bins
CONTRAST_COLUMN = "lesion_contrast"
CONTRAST_BINS = (("<0.1", 0.0, 0.1), ("0.1-0.2", 0.1, 0.2), (">=0.2", 0.2, math.inf))
NUMERIC_COLUMNS = (*SIZE_COLUMNS, CONTRAST_COLUMN)  # optional labels.csv columns read as numbers
IMAGE_METRICS = {
    "image_auroc": M.image_auroc,
    "image_ap": M.image_ap,
    "sensitivity_at_95_specificity": functools.partial(M.sensitivity_at_specificity, specificity=SPECIFICITY),
}


# ----------------------------------------------------------------------------- reading


def _check_folder(root: Path, what: str = "data") -> list[Item]:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{what} folder {root} is a file, not a folder")
    if not root.exists():
        raise DatasetError(f"{what} folder {root} does not exist")
    if root.is_dir() and not any(root.iterdir()):
        raise DatasetError(f"{what} folder {root} is empty (expected images/, optional masks/ and labels.csv)")
    items = read_folder(root)  # labels are checked there (0, 1 or empty)
    csv_path = root / "labels.csv"
    for it in items:
        for col in NUMERIC_COLUMNS:
            s = str(it.extras.get(col, "") or "").strip()
            if s and _column_number(s) is None:
                raise DatasetError(f"{csv_path}: {col} of {it.image_path.name} must be a number >= 0, or several "
                                   f"joined by ';' (one per lesion of a volume), or empty; got {s!r}")
    return items


def _column_number(text: str) -> float | None:
    """A numeric labels.csv cell: a number >= 0, or several joined by ";" (a volume with several
    lesions, as the cohort writes them) read as the largest; None when it is not written so."""
    try:
        vals = [float(x) for x in str(text).split(";")]
    except ValueError:
        return None
    if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
        return None
    return max(vals)


def _n_slices(item: Item) -> int:
    """Number of 2D samples of an item without reading its pixels (NIfTI header only)."""
    p = item.image_path
    if p.name.lower().endswith(".png"):
        return 1
    try:
        import nibabel as nib

        img = nib.load(str(p))
        shape = img.shape
        if len(shape) == 2:
            return 1
        ornt = nib.orientations.io_orientation(img.affine)
        return int(shape[int(np.nonzero(ornt[:3, 0] == 2)[0][0])])
    except Exception:
        return read_image(p).shape[0]


def read_item(item: Item) -> list[Sample]:
    """All 2D samples of one item (``anomaly.data.folder.item_samples``)."""
    return item_samples(item)


def _subset(prep: PreparedSlices, idx: np.ndarray) -> PreparedSlices:
    from anomaly.preprocess import PreparedSlices

    return PreparedSlices(prep.images[idx], prep.masks[idx], prep.boxes[idx], prep.original_shape,
                          prep.original_masks[idx], prep.valid[idx])


def _concat(preps: list[PreparedSlices]) -> PreparedSlices:
    """Model-space concatenation for one ``run_method`` call (original geometry is not used)."""
    from anomaly.preprocess import PreparedSlices

    n = sum(len(p) for p in preps)
    return PreparedSlices(np.concatenate([p.images for p in preps]), np.concatenate([p.masks for p in preps]),
                          np.concatenate([p.boxes for p in preps]), (0, 0), np.zeros((n, 0, 0), bool),
                          np.concatenate([p.valid for p in preps]))


@dataclass
class _Entry:
    item: Item
    samples: list[Sample]
    prep: PreparedSlices
    ids: list[int] = field(default_factory=list)  # global sample ids (test set only)
    truths: list[np.ndarray | None] = field(default_factory=list)  # pixel truth per sample (test set only)


def pixel_truth(mask: np.ndarray | None, label: int | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The lesion pixels a sample's map is judged against, or None when unknown.

    The sample's mask where its file has one; an empty mask for a sample labelled normal without
    one (a healthy slice has no lesion pixel, so every pixel its map flags is a false positive);
    None for an anomalous or unlabelled sample without a mask (where its lesion lies is unknown).
    """
    if mask is not None:
        return mask
    if label == 0:
        return np.zeros(shape, bool)
    return None


def _chunks(items: list[Item], selection: dict[str, set[int]] | None, exclude_invalid: bool,
            skipped: list[dict], progress: bool, desc: str):
    """Yield lists of ``_Entry`` holding about ``BATCH`` slices or more (one file is never split)."""
    from anomaly.data.folder import read_pixel_spacing
    from anomaly.preprocess import preprocess_slices
    from anomaly.scoring import BATCH

    pending: list[_Entry] = []
    n = 0
    bar = tqdm(items, desc=desc, unit="file", disable=not progress, dynamic_ncols=True, leave=False)
    for item in bar:
        keep = None if selection is None else selection.get(item.name, set())
        if keep is not None and not keep:
            continue
        samples = read_item(item)
        stack = np.stack([s.image for s in samples])
        try:
            prep = preprocess_slices(stack, pixel_spacing=read_pixel_spacing(item.image_path))
        except AnomalyError as e:  # constant / all-NaN / too small: nothing to analyse
            skipped.append({"file": str(item.image_path), "reason": str(e)})
            tqdm.write(f"warning: skipped {item.image_path}: {e}", file=sys.stderr)
            continue
        idx = [i for i in range(len(samples)) if (keep is None or i in keep)
               and (not exclude_invalid or bool(prep.valid[i]))]
        if not idx:
            continue
        if len(idx) < len(samples):
            samples = [samples[i] for i in idx]
            prep = _subset(prep, np.asarray(idx))
        pending.append(_Entry(item, samples, prep))
        n += len(samples)
        if n >= BATCH:
            yield pending
            pending, n = [], 0
    if pending:
        yield pending
    bar.close()


def _select(items: list[Item], max_slices: int | None, seed: int) -> dict[str, set[int]] | None:
    """A seeded uniform random subset of ``max_slices`` samples over the whole folder."""
    if max_slices is None:
        return None
    if max_slices <= 0:
        raise DatasetError(f"--max-slices must be positive, got {max_slices}")
    counts = [_n_slices(it) for it in items]
    total = int(sum(counts))
    if max_slices >= total:
        return None
    pick = np.sort(np.random.default_rng(seed).choice(total, max_slices, replace=False))
    starts = np.cumsum([0] + counts)
    sel: dict[str, set[int]] = {}
    for g in pick:
        k = int(np.searchsorted(starts, g, side="right") - 1)
        sel.setdefault(items[k].name, set()).add(int(g - starts[k]))
    return sel


# ----------------------------------------------------------------------------- accumulation


class _PixelStore:
    """Brain pixels of the masked samples, shared by all methods, as a uniform random sample.

    Every pixel gets a fixed random key; a pixel is kept while its key is below ``rate``.
    Whenever more than ``metrics.MAX_PIXELS`` pixels are kept, ``rate`` halves. The kept
    pixels are therefore a deterministic uniform sample (all of them for small data sets).
    """

    def __init__(self, seed: int, max_pixels: int = M.MAX_PIXELS):
        self.seed, self.max_pixels, self.rate = seed, max_pixels, 1.0
        self.idx: dict[int, np.ndarray] = {}  # sample id -> kept positions among its brain pixels
        self.keys: dict[int, np.ndarray] = {}
        self.labels: dict[int, np.ndarray] = {}
        self.values: dict[str, dict[int, np.ndarray]] = {}
        self.n_total = 0

    @property
    def n_kept(self) -> int:
        return int(sum(len(v) for v in self.idx.values()))

    def add_sample(self, sid: int, lesion_in_brain: np.ndarray) -> None:
        n = lesion_in_brain.size
        self.n_total += n
        keys = np.random.default_rng([self.seed, sid]).random(n, dtype=np.float32)
        pos = np.nonzero(keys < self.rate)[0]
        self.idx[sid], self.keys[sid], self.labels[sid] = pos, keys[pos], lesion_in_brain[pos]
        while self.n_kept > self.max_pixels:
            self.rate /= 2
            for s in list(self.idx):
                k = self.keys[s] < self.rate
                self.idx[s], self.keys[s], self.labels[s] = self.idx[s][k], self.keys[s][k], self.labels[s][k]
                for vals in self.values.values():
                    if s in vals:
                        vals[s] = vals[s][k]

    def add_values(self, method: str, sid: int, values_in_brain: np.ndarray) -> None:
        self.values.setdefault(method, {})[sid] = np.asarray(values_in_brain, np.float32)[self.idx[sid]]

    def arrays(self, method: str, sids=None) -> tuple[np.ndarray, np.ndarray]:
        ids = sorted(self.idx) if sids is None else [s for s in sids if s in self.idx]
        vals = self.values.get(method, {})
        if not ids:
            return np.zeros(0, np.int8), np.zeros(0, np.float32)
        return (np.concatenate([self.labels[s] for s in ids]).astype(np.int8),
                np.concatenate([vals[s] for s in ids]))


@dataclass
class _MethodAcc:
    name: str
    method: AnomalyMethod
    threshold: float | None
    threshold_source: str
    scores: dict[int, float] = field(default_factory=dict)
    n_run: int = 0
    ms_total: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    worst_normal: list = field(default_factory=list)  # min-heap of (score, -sid, payload)
    missed: list = field(default_factory=list)  # min-heap of (-score, -sid, payload)


def _push(heap: list, key: float, sid: int, payload_fn, k: int = MONTAGE_K) -> None:
    if not np.isfinite(key):
        return
    entry = (key, -sid)
    if len(heap) < k:
        heapq.heappush(heap, (*entry, payload_fn()))
    elif entry > heap[0][:2]:
        heapq.heapreplace(heap, (*entry, payload_fn()))


# ----------------------------------------------------------------------------- main API


def load_methods(names: list[str], checkpoint_root: Path | None) -> dict[str, AnomalyMethod]:
    out = {}
    for n in names:
        out[n] = get_method(n, Path(checkpoint_root) / n if checkpoint_root else None)
    return out


def calibrate_on(val_dir: Path, methods: dict[str, AnomalyMethod], seed: int = 0,
                 progress: bool = True) -> dict:
    """Calibrations recomputed on a folder of healthy images (valid slices, label != 1),
    exactly as ``anomaly.train`` calibrates: ``fit_calibration`` of post-processed maps."""
    from anomaly.scoring import run_method

    items = _check_folder(val_dir, "validation")
    vals: dict[str, list[np.ndarray]] = {n: [] for n in methods}
    scores: dict[str, list[np.ndarray]] = {n: [] for n in methods}
    fills: list[np.ndarray] = []
    skipped: list[dict] = []
    for chunk in _chunks(items, None, False, skipped, progress, "calibrate"):
        keep = np.concatenate([[bool(p) and s.label != 1 for s, p in zip(e.samples, e.prep.valid)] for e in chunk])
        if not keep.any():
            continue
        prep = _concat([e.prep for e in chunk])
        fills.append(brain_fill(prep.masks[keep]))
        for name, m in methods.items():
            res = run_method(m, prep, seed=seed)
            vals[name].append(res.anomaly_map[keep][prep.masks[keep]])
            scores[name].append(res.raw_scores[keep])
    out = {}
    for name in methods:
        if not scores[name]:
            raise DatasetError(f"validation folder {val_dir} has no healthy slice with enough brain to calibrate on")
        v = np.concatenate(vals[name])
        out[name] = fit_calibration(v, np.ones(v.shape, bool), np.concatenate(scores[name]),
                                    fill=np.concatenate(fills))
    return out


def evaluate(data_dir, methods: list[str], out_dir, val_data=None, checkpoint_root=None,
             max_slices: int | None = None, seed: int = 0, bootstrap: int = 1000,
             exclude_invalid: bool = False, progress: bool = True, reference: str | None = "auto") -> dict:
    """Evaluate ``methods`` on ``data_dir``; write the report files to ``out_dir``; return the metrics dict.

    ``methods`` may be ``["all"]`` (every registered method with a checkpoint under
    ``checkpoint_root``). ``reference``: the method the others are compared with, paired
    (``"auto"``: ``ae`` if it is evaluated; ``None`` or ``"none"``: no comparison).
    Raises ``AnomalyError`` subclasses for bad input.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    items = _check_folder(data_dir)
    from anomaly.scoring import run_method
    if checkpoint_root is not None and not Path(checkpoint_root).is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint_root} does not exist")
    if val_data is not None:
        _check_folder(Path(val_data), "validation")
    spec = ",".join(methods) if not isinstance(methods, str) else methods
    if not spec.strip(" ,"):
        raise InvalidRequestError("no method named: give --methods all or NAME[,NAME]")
    names = resolve_methods(spec, Path(checkpoint_root) if checkpoint_root else None)
    if not names:
        raise CheckpointError(
            f"no method to evaluate: no registered method has a trained checkpoint (card.json) under "
            f"{checkpoint_root or 'checkpoints/'}; train one with python -m anomaly.train METHOD --data DIR"
        )
    # "all" means the methods with a checkpoint here: say which registered ones that leaves out
    from anomaly.methods.base import registered_methods

    missing = [m for m in registered_methods() if m not in names] if spec.strip().lower() == "all" else []
    if missing:
        print(f"note: --methods all: no checkpoint under {checkpoint_root or 'checkpoints/'} for "
              f"{', '.join(missing)}: not evaluated", file=sys.stderr)
    asked_reference = reference
    reference = _reference_for(reference, names)
    if out_dir.exists() and not out_dir.is_dir():
        raise AnomalyError(f"output path {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnomalyError(f"cannot create the output folder {out_dir}: {e}") from e
    loaded = load_methods(names, checkpoint_root)

    cals = calibrate_on(Path(val_data), loaded, seed, progress) if val_data is not None else {}
    accs: dict[str, _MethodAcc] = {}
    for name, m in loaded.items():
        if name in cals:
            thr, src = cals[name].pixel_threshold, f"recomputed on {val_data}"
        elif m.calibration is not None:
            thr, src = float(m.calibration.pixel_threshold), "checkpoint card (healthy validation set)"
        else:
            thr, src = None, "none (the checkpoint has no calibration)"
        accs[name] = _MethodAcc(name, m, thr, src)

    selection = _select(items, max_slices, seed)
    meta: list[dict] = []  # per sample: item, index, label, has_mask, valid, kind, size_mm
    store = _PixelStore(seed)
    skipped: list[dict] = []
    lesion_px, lesion_px_in_brain = 0, 0
    for chunk in _chunks(items, selection, exclude_invalid, skipped, progress, "evaluate"):
        for e in chunk:
            kind = str(e.item.extras.get("kind", "") or "").strip() or None
            sizes = {c: str(e.item.extras.get(c, "") or "").strip() for c in NUMERIC_COLUMNS}
            for k, s in enumerate(e.samples):
                sid = len(meta)
                e.ids.append(sid)
                truth = pixel_truth(s.mask, s.label, e.prep.original_masks[k].shape)
                e.truths.append(truth)
                meta.append({"file": e.item.image_path.name, "index": s.index, "label": s.label,
                             "has_mask": s.mask is not None, "has_pixel_truth": truth is not None,
                             "valid": bool(e.prep.valid[k]),
                             "kind": kind, "subject": e.item.subject,
                             **{c: _column_number(v) if v else None for c, v in sizes.items()}})
                if truth is not None:
                    brain = e.prep.original_masks[k]
                    store.add_sample(sid, truth[brain])
                    lesion_px += int(truth.sum())
                    lesion_px_in_brain += int(truth[brain].sum())
        prep = _concat([e.prep for e in chunk])
        for name, acc in accs.items():
            res = run_method(acc.method, prep, seed=seed)
            acc.n_run += len(prep)
            acc.ms_total += res.ms_per_slice * len(prep)
            off = 0
            for e in chunk:
                n = len(e.samples)
                is_png = e.item.image_path.name.lower().endswith(".png")
                maps = e.prep.to_original(res.anomaly_map[off:off + n])
                for k, (s, sid, truth) in enumerate(zip(e.samples, e.ids, e.truths)):
                    score = float(res.scores[off + k])
                    acc.scores[sid] = score
                    if truth is not None:
                        brain = e.prep.original_masks[k]
                        v = maps[k][brain]
                        store.add_values(name, sid, v)
                        if acc.threshold is not None:
                            pred, t = v > acc.threshold, truth[brain]
                            tp = int(np.count_nonzero(pred & t))
                            acc.tp += tp
                            acc.fp += int(np.count_nonzero(pred)) - tp
                            acc.fn += int(np.count_nonzero(t)) - tp

                    def payload(s=s, k=k, maps=maps, e=e, score=score):
                        return {"image": s.image.copy(), "map": maps[k].copy(),
                                "mask": None if s.mask is None else s.mask.copy(),
                                "brain": e.prep.original_masks[k].copy(),
                                "title": e.item.image_path.name + ("" if is_png else f" [slice {s.index}]")
                                + f"\nscore {score:.3g}"}

                    if s.label == 0:
                        _push(acc.worst_normal, score, sid, payload)
                    elif s.label == 1:
                        _push(acc.missed, -score, sid, payload)
                off += n

    if not meta:
        raise DatasetError(f"no slice of {data_dir} could be evaluated"
                           + (f" ({len(skipped)} file(s) skipped: nothing to analyse)" if skipped else ""))

    result = _summarise(data_dir, meta, accs, store, skipped, seed, bootstrap, exclude_invalid,
                        max_slices, val_data, lesion_px, lesion_px_in_brain)
    result["paired"] = _paired_differences(reference, meta, accs, store, bootstrap, seed)
    result["methods_without_checkpoint"] = missing
    if result["paired"] is None and asked_reference == "auto":  # why there is no paired table
        result["paired_note"] = (f"no paired comparison: the reference {DEFAULT_REFERENCE} was not evaluated"
                                 if DEFAULT_REFERENCE not in names else "no paired comparison: one method only")
    figures = _write_figures(out_dir, meta, accs)
    result["figures"] = figures
    _write_scores_csv(out_dir / SCORES_FILE, meta, accs)
    clean = _jsonable(result)
    (out_dir / "metrics.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    (out_dir / "metrics.md").write_text(markdown_report(clean))
    return clean


SCORES_FILE = "scores.csv"


def _write_scores_csv(path: Path, meta: list[dict], accs: dict[str, _MethodAcc]) -> None:
    """One row per evaluated sample: where it comes from, its label and every method's image score.

    For analyses the summary does not make (a score against a lesion property, two methods'
    scores against each other). Empty cells: no label / size / score.
    """
    n = len(meta)
    vectors = {name: _score_vector(acc, n) for name, acc in accs.items()}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "slice", "label", "valid", "kind", *NUMERIC_COLUMNS, *vectors])
        for i, m in enumerate(meta):
            # a file's kind and sizes describe its lesion: not the lesion-free slices of a lesion volume
            lesion_free = m["label"] == 0
            sizes = ["" if m.get(c) is None or lesion_free else f"{m[c]:g}" for c in NUMERIC_COLUMNS]
            scores = ["" if not np.isfinite(v[i]) else f"{v[i]:.6g}" for v in vectors.values()]
            w.writerow([m["file"], m["index"], "" if m["label"] is None else m["label"], int(m["valid"]),
                        "" if lesion_free else (m["kind"] or ""), *sizes, *scores])


# ----------------------------------------------------------------------------- summary


DEFAULT_REFERENCE = "ae"
PAIRED_METRICS = ("image_auroc", "image_ap", "pixel_ap")


def _reference_for(reference: str | None, names: list[str]) -> str | None:
    """The reference method of the paired comparison, checked against the evaluated methods."""
    if reference is None or reference == "none":
        return None
    if reference == "auto":
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in names and len(names) > 1 else None
    if reference not in names:
        raise AnomalyError(f"reference method {reference!r} is not among the evaluated methods "
                           f"({', '.join(names)}); add it to --methods or pass --reference none")
    return reference


def _paired_differences(reference: str | None, meta: list[dict], accs: dict, store: _PixelStore,
                        bootstrap: int, seed: int) -> dict | None:
    """Each method minus ``reference`` on the same slices: image AUROC, image AP, pixel AP, paired CIs."""
    if reference is None or reference not in accs or len(accs) < 2:
        return None
    labels = _labels(meta)
    known = labels >= 0
    y = labels[known]
    scores = {name: _score_vector(acc, len(meta))[known] for name, acc in accs.items()}
    sids = sorted(store.idx)
    masks = [store.labels[s] for s in sids]
    ref_maps = [store.values[reference][s] for s in sids]
    subjects = _subjects(meta, known)
    pixel_subjects = _subjects(meta, np.isin(np.arange(len(meta)), sids)) if subjects is not None else None

    def differences(name: str, groups, pixel_groups, pixel: bool = True) -> dict:
        return {
            "image_auroc": M.paired_bootstrap(M.image_auroc, y, scores[name], scores[reference], n=bootstrap,
                                              seed=seed, groups=groups),
            "image_ap": M.paired_bootstrap(M.image_ap, y, scores[name], scores[reference], n=bootstrap, seed=seed,
                                           groups=groups),
            # the pixel slices may name fewer subjects than the labelled ones: then no such interval
            "pixel_ap": (M.paired_pixel_ap_bootstrap(masks, [store.values[name][s] for s in sids], ref_maps,
                                                     n=bootstrap, seed=seed, groups=pixel_groups)
                         if pixel else M.PairedDifference(M.NAN, M.NAN, M.NAN, M.NAN)),
        }

    out = {}
    for name in accs:
        if name == reference:
            continue
        out[name] = {k: {"difference": d.difference, "ci": [d.low, d.high], "share_not_better": d.share_not_better}
                     for k, d in differences(name, None, None).items()}
        if subjects is not None:
            out[name]["by_subject"] = {k: {"ci": [d.low, d.high], "share_not_better": d.share_not_better}
                                       for k, d in differences(name, subjects, pixel_subjects,
                                                               pixel_subjects is not None).items()}
    return {"reference": reference, "bootstrap": int(bootstrap), "methods": out}


def _labels(meta: list[dict]) -> np.ndarray:
    """(N,) image labels, -1 where unknown."""
    return np.array([-1 if m["label"] is None else m["label"] for m in meta])


MIN_SUBJECTS = 3  # fewer subjects give no subject-resampled CIs


def _subjects(meta: list[dict], sel: np.ndarray) -> np.ndarray | None:
    """The ``subject`` (labels.csv) of each selected sample, for a bootstrap that resamples
    subjects; None unless every selected sample names one and there are at least 3 of them."""
    subj = [meta[i].get("subject") for i in np.nonzero(sel)[0]]
    if not subj or any(v is None for v in subj) or len(set(subj)) < MIN_SUBJECTS:
        return None
    return np.array(subj, dtype=object)


def _subjects_note(meta: list[dict], known: np.ndarray) -> str | None:
    """Why a data set that names subjects gets no subject-resampled CIs (None: it got them, or it
    names none at all)."""
    subj = [meta[i].get("subject") for i in np.nonzero(known)[0]]
    named = [v for v in subj if v is not None]
    if not named:
        return None
    if len(named) < len(subj):
        return (f"no CIs resampling subjects: {len(subj) - len(named)} of the {len(subj)} labelled slices have no "
                f"subject in labels.csv")
    if len(set(named)) < MIN_SUBJECTS:
        return f"no CIs resampling subjects: labels.csv names {len(set(named))} subject(s), at least {MIN_SUBJECTS} needed"
    return None


def _score_vector(acc: _MethodAcc, n: int) -> np.ndarray:
    """(N,) a method's image scores in sample order, NaN where it scored none."""
    return np.array([acc.scores.get(i, np.nan) for i in range(n)])


def _group_image_auroc(labels: np.ndarray, scores: np.ndarray, group: np.ndarray) -> float:
    sel = (labels == 0) | ((labels == 1) & group)
    return M.image_auroc(labels[sel], scores[sel])


def _at_least(meta: list[dict], column: str, mm: float) -> np.ndarray:
    """(N,) bool: the sample's ``column`` (a SIZE_COLUMNS value) is given and >= ``mm``."""
    return np.array([m.get(column) is not None and m[column] >= mm for m in meta], bool)


def _size_bin(size: float | None, bins=SIZE_BINS) -> str | None:
    if size is None or not np.isfinite(size):
        return None
    for name, lo, hi in bins:
        if lo <= size < hi:
            return name
    return None


def _summarise(data_dir, meta, accs, store, skipped, seed, bootstrap, exclude_invalid, max_slices,
               val_data, lesion_px, lesion_px_in_brain) -> dict:
    labels = _labels(meta)
    has_mask = np.array([m["has_mask"] for m in meta])
    has_truth = np.array([m["has_pixel_truth"] for m in meta])
    kinds = sorted({m["kind"] for m in meta if m["kind"] and m["label"] == 1})
    bins = np.array([_size_bin(m["size_mm"]) for m in meta], dtype=object)
    known = labels >= 0
    groups: dict[str, dict[str, np.ndarray]] = {
        "kind": {k: np.array([m["kind"] == k for m in meta]) for k in kinds},
        "size_bin": {b: bins == b for b, _, _ in SIZE_BINS if np.any((bins == b) & (labels == 1))},
    }
    ge10 = _at_least(meta, "size_mm", 10.0)
    if np.any(ge10 & (labels == 1)):
        groups["size_ge_10mm"] = {">=10 mm": ge10}
    ext = np.array([_size_bin(m.get("slice_extent_mm")) for m in meta], dtype=object)
    if np.any(np.array([b is not None for b in ext], bool) & (labels == 1)):
        groups["slice_extent_bin"] = {b: ext == b for b, _, _ in SIZE_BINS if np.any((ext == b) & (labels == 1))}
        in_slice = _at_least(meta, "slice_extent_mm", 10.0)
        if np.any(in_slice & (labels == 1)):
            groups["slice_extent_ge_10mm"] = {">=10 mm in the slice": in_slice}
    con = np.array([_size_bin(m.get(CONTRAST_COLUMN), CONTRAST_BINS) for m in meta], dtype=object)
    if np.any(np.array([b is not None for b in con], bool) & (labels == 1)):
        groups["contrast_bin"] = {b: con == b for b, _, _ in CONTRAST_BINS if np.any((con == b) & (labels == 1))}
        if np.any(ge10 & (labels == 1)):
            groups["size_ge_10mm_contrast_bin"] = {
                f">=10 mm, contrast {b}": ge10 & (con == b) for b, _, _ in CONTRAST_BINS
                if np.any(ge10 & (con == b) & (labels == 1))}

    subjects = _subjects(meta, known)
    methods_out = {}
    for name, acc in accs.items():
        scores = _score_vector(acc, len(meta))
        y, s = labels[known], scores[known]
        r: dict = {}
        for key, fn in IMAGE_METRICS.items():
            r[key] = fn(y, s)
        py, pv = store.arrays(name)
        r["pixel_auroc"] = M.pixel_auroc(py, pv)
        r["pixel_ap"] = M.pixel_ap(py, pv)
        bd, bthr = M.best_dice_threshold(py, pv, N_DICE_THRESHOLDS)
        r["best_dice"] = bd
        r["best_dice_threshold"] = bthr
        r["dice_at_val_threshold"] = (float(M._dice_counts(acc.tp, acc.fp, acc.fn))
                                      if acc.threshold is not None and lesion_px_in_brain else None)
        r["val_pixel_threshold"] = acc.threshold
        r["threshold_source"] = acc.threshold_source
        r["ms_per_slice"] = acc.ms_total / max(acc.n_run, 1)
        r["ci"] = {key: list(M.bootstrap_ci(fn, y, s, n=bootstrap, seed=seed)) for key, fn in IMAGE_METRICS.items()}
        if subjects is not None:
            r["ci_by_subject"] = {key: list(M.bootstrap_ci(fn, y, s, n=bootstrap, seed=seed, groups=subjects))
                                  for key, fn in IMAGE_METRICS.items()}
        br: dict = {}
        for gname, gs in groups.items():
            br[gname] = {}
            for label, member in gs.items():
                pos = member & (labels == 1)
                sids = np.nonzero(pos & has_truth)[0]
                with_normals = np.nonzero((pos | (labels == 0)) & has_truth)[0]
                br[gname][label] = {
                    "n_positive": int(pos.sum()),
                    "n_normal": int((labels == 0).sum()),
                    "image_auroc": _group_image_auroc(labels, scores, member),
                    "n_positive_with_mask": int(len(sids)),
                    "pixel_ap": M.pixel_ap(*store.arrays(name, with_normals)),
                    "pixel_ap_lesion_slices_only": M.pixel_ap(*store.arrays(name, sids)),
                }
        r["breakdowns"] = br
        r["checkpoint_hash"] = acc.method.checkpoint_hash
        r["n_scored"] = int(len(acc.scores))
        methods_out[name] = r

    valid = np.array([m["valid"] for m in meta])
    return {
        "schema_version": SCHEMA_VERSION,
        "data": str(data_dir),
        "n_images": len(meta),
        "n_normal": int((labels == 0).sum()),
        "n_anomalous": int((labels == 1).sum()),
        "n_unlabelled": int((labels < 0).sum()),
        "n_with_mask": int(has_mask.sum()),
        "n_with_pixel_truth": int(has_truth.sum()),
        "n_files": len({m["file"] for m in meta}),
        "n_subjects": int(len(set(subjects))) if subjects is not None else None,
        "subjects_note": _subjects_note(meta, known),
        "n_invalid": int((~valid).sum()),
        "invalid_slices": "excluded" if exclude_invalid else "included",
        "postprocessing": _postprocessing_text(),
        "pixel_region": PIXEL_REGION,
        "pixel_sample": {"n_pixels": int(store.n_total), "n_used": int(store.n_kept),
                         "fraction": float(store.rate)},
        "lesion_pixels_in_brain_fraction": (lesion_px_in_brain / lesion_px) if lesion_px else None,
        "specificity": SPECIFICITY,
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "max_slices": max_slices,
        "val_data": str(val_data) if val_data is not None else None,
        "skipped": skipped,
        "methods": methods_out,
    }


def _postprocessing_text() -> str:
    from anomaly.scoring import MEDIAN_SIZE

    return POSTPROCESSING.replace("5x5", f"{MEDIAN_SIZE}x{MEDIAN_SIZE}")


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.generic,)):
        o = o.item()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


def _fmt(v, ci=None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    if ci is not None and ci[0] is not None and ci[1] is not None:
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def _fmt_signed(v, ci) -> str:
    if v is None:
        return "n/a"
    s = f"{v:+.3f}"
    if ci is not None and ci[0] is not None and ci[1] is not None:
        s += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return s


def markdown_report(res: dict) -> str:
    """A markdown summary of a metrics dict (as returned by ``evaluate``)."""
    lines = [
        f"# Evaluation on `{res['data']}`",
        "",
        f"{res['n_images']} slices ({res['n_normal']} normal, {res['n_anomalous']} anomalous, "
        f"{res['n_unlabelled']} unlabelled), {res['n_with_mask']} with a mask, "
        f"{res['n_with_pixel_truth']} in the pixel metrics. "
        f"Post-processing: {res['postprocessing']}. Slices with too little brain: {res['invalid_slices']} "
        f"({res['n_invalid']}). Pixel metrics {res['pixel_region']}. "
        f"Image-level 95% CIs: percentile bootstrap, {res['bootstrap']} resamples.",
        "",
        "| Method | Image AUROC | Image AP | Sens. @ 95% spec. | Pixel AUROC | Pixel AP | Best Dice | "
        "Dice @ val thr. | ms/slice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    if res.get("methods_without_checkpoint"):
        notes.append(f"Not evaluated (`--methods all`, no checkpoint in the checkpoint folder): "
                     f"{', '.join(res['methods_without_checkpoint'])}.")
    if not (res["n_normal"] and res["n_anomalous"]):
        notes.append("Image metrics need normal and anomalous slices alike: n/a here "
                     f"({res['n_normal']} normal, {res['n_anomalous']} anomalous).")
    if not res["n_with_pixel_truth"] or not res["n_anomalous"]:
        notes.append("Pixel metrics need lesion masks: n/a here.")
    if res.get("paired_note"):
        notes.append(res["paired_note"].capitalize() + ".")
    if res.get("subjects_note"):
        notes.append(res["subjects_note"].capitalize() + ".")
    if notes:
        lines[-2:-2] = [" ".join(notes), ""]  # between the summary and the table
    for name, r in res["methods"].items():
        ci = r["ci"]
        lines.append(
            f"| {name} | {_fmt(r['image_auroc'], ci['image_auroc'])} | {_fmt(r['image_ap'], ci['image_ap'])} | "
            f"{_fmt(r['sensitivity_at_95_specificity'], ci['sensitivity_at_95_specificity'])} | "
            f"{_fmt(r['pixel_auroc'])} | {_fmt(r['pixel_ap'])} | {_fmt(r['best_dice'])} | "
            f"{_fmt(r['dice_at_val_threshold'])} | {_fmt(r['ms_per_slice'])} |"
        )
    by_subject = [(name, r["ci_by_subject"]) for name, r in res["methods"].items() if r.get("ci_by_subject")]
    if by_subject:
        lines += ["", "## Image-level CIs resampling subjects", "",
                  f"The CIs above resample slices; slices of one subject are not independent. Here each of the "
                  f"{res['bootstrap']} resamples draws the {res.get('n_subjects')} subjects (labels.csv `subject`) "
                  f"with replacement and takes all their slices: CIs that speak for other subjects, not only for other "
                  f"slices of these (usually wider).", "",
                  "| Method | Image AUROC | Image AP | Sens. @ 95% spec. |", "|---|---|---|---|"]
        for name, ci in by_subject:
            r = res["methods"][name]
            lines.append(f"| {name} | " + " | ".join(_fmt(r[k], ci[k]) for k in IMAGE_METRICS) + " |")
    titles = {"kind": "lesion kind", "size_bin": "lesion size (largest 3D diameter)",
              "size_ge_10mm": "lesions >= 10 mm (3D diameter)",
              "slice_extent_bin": "lesion extent in the slice (largest 2D diameter)",
              "slice_extent_ge_10mm": "lesions >= 10 mm across in the scored slice",
              "contrast_bin": "lesion contrast (mean intensity change inside the lesion)",
              "size_ge_10mm_contrast_bin": "lesion contrast, lesions >= 10 mm"}
    for gname, title in titles.items():
        rows = [(name, label, g) for name, r in res["methods"].items()
                for label, g in r["breakdowns"].get(gname, {}).items()]
        if not rows:
            continue
        lines += ["", f"## By {title}", "",
                  "| Method | Group | Positives | Image AUROC (vs all normals) | Pixel AP (with all normals) "
                  "| Pixel AP (lesion slices only) |",
                  "|---|---|---|---|---|---|"]
        for name, label, g in rows:
            lines.append(f"| {name} | {label} | {g['n_positive']} | {_fmt(g['image_auroc'])} | {_fmt(g['pixel_ap'])} "
                         f"| {_fmt(g['pixel_ap_lesion_slices_only'])} |")
    paired = res.get("paired")
    if paired and paired["methods"]:
        ref = paired["reference"]
        lines += ["", f"## Paired differences: each method minus {ref}", "",
                  f"Same slices for both in every one of {paired['bootstrap']} bootstrap resamples "
                  f"(95% CI of the difference); 'not better' = share of resamples where the method "
                  f"does not beat {ref}.", "",
                  "| Method | Image AUROC diff. | not better | Image AP diff. | not better | Pixel AP diff. | not better |",
                  "|---|---|---|---|---|---|---|"]
        for name, d in paired["methods"].items():
            cells = []
            for k in PAIRED_METRICS:
                cells += [_fmt_signed(d[k]["difference"], d[k]["ci"]), _fmt(d[k]["share_not_better"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        subj = [(name, d) for name, d in paired["methods"].items() if d.get("by_subject")]
        if subj:
            lines += ["", f"## Paired differences resampling subjects: each method minus {ref}", "",
                      f"As above, but each resample draws whole subjects ({res.get('n_subjects')}, with replacement; "
                      f"pixel AP: the subjects of the slices in the pixel metrics), the same for both methods.", "",
                      "| Method | Image AUROC diff. | not better | Image AP diff. | not better | Pixel AP diff. | not better |",
                      "|---|---|---|---|---|---|---|"]
            for name, d in subj:
                cells = []
                for k in PAIRED_METRICS:
                    cells += [_fmt_signed(d[k]["difference"], d["by_subject"][k]["ci"]),
                              _fmt(d["by_subject"][k]["share_not_better"])]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    frac = res.get("lesion_pixels_in_brain_fraction")
    if frac is not None and frac < LESION_IN_BRAIN_WARNING:
        lines[2] += (f"\n\n**Warning:** only {100 * frac:.0f}% of the lesion-mask pixels fall inside the brain masks "
                     "the pixel metrics use: the brain extraction cuts lesions off (near the brain's edge?), and "
                     "the pixel figures ignore the rest.")
    if res.get("skipped"):
        lines += ["", "## Skipped files", ""] + [f"- `{s['file']}`: {s['reason']}" for s in res["skipped"]]
    lines += ["", "Best Dice is chosen on the test data (optimistic); Dice @ val thr. uses the healthy-validation "
              "pixel threshold only. Schema: docs/metrics_schema.md.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _curve_figure(path: Path, meta, accs, kind: str, member: np.ndarray | None = None, title: str = "") -> bool:
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels = _labels(meta)
    sel = (labels == 0) | ((labels == 1) & (member if member is not None else True))
    fig = _new_figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for name, acc in accs.items():
        s = _score_vector(acc, len(meta))
        ok = sel & np.isfinite(s)
        y, sc = labels[ok], s[ok]
        if len(set(y.tolist())) < 2:
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(y, sc)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {M.image_auroc(y, sc):.3f})")
        else:
            p, r, _ = precision_recall_curve(y, sc)
            ax.step(r, p, where="post", label=f"{name} (AP {M.image_ap(y, sc):.3f})")
        drawn = True
    if not drawn:
        return False
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_ylabel("true-positive rate (sensitivity)")
    else:
        ax.axhline(float(np.mean(labels[sel] == 1)), color="0.7", lw=1, ls="--")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or ("image-level ROC" if kind == "roc" else "image-level precision-recall"))
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _montage(path: Path, acc: _MethodAcc) -> bool:
    fps = [p for _, _, p in sorted(acc.worst_normal, reverse=True)]
    fns = [p for _, _, p in sorted(acc.missed, reverse=True)]
    if not fps and not fns:
        return False
    cols = max(len(fps), len(fns), 1)
    fig = _new_figure(2.4 * cols, 10)
    thr = acc.threshold
    for row, (cases, what) in enumerate([(fps, "highest-scoring normal"), (fns, "lowest-scoring anomalous")]):
        for c in range(cols):
            ax_in = fig.add_subplot(4, cols, (2 * row) * cols + c + 1)
            ax_ov = fig.add_subplot(4, cols, (2 * row + 1) * cols + c + 1)
            for ax in (ax_in, ax_ov):
                ax.set_axis_off()
            if c >= len(cases):
                continue
            p = cases[c]
            img = p["image"]
            lo, hi = np.percentile(img, [1, 99.5])
            if p["mask"] is not None and p["mask"].any():  # keep a bright lesion distinguishable
                hi = max(hi, float(np.percentile(img[p["mask"]], 99)))
            ax_in.imshow(img, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            ax_in.set_title(f"{what}\n{p['title']}", fontsize=7)
            ax_ov.imshow(img, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            mp = p["map"]
            vmax = 2 * thr if thr else max(float(np.percentile(mp[p["brain"]], 99.9)) if p["brain"].any() else 0.0, 1e-6)
            # only values above the healthy threshold (or half the display maximum if uncalibrated)
            ax_ov.imshow(np.ma.masked_where(mp <= (thr if thr else 0.25 * vmax), mp), cmap="inferno",
                         alpha=0.7, vmin=0, vmax=vmax)
            if p["mask"] is not None and p["mask"].any():
                ax_ov.contour(p["mask"].astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
            lesion = p["mask"] is not None and p["mask"].any()
            ax_ov.set_title(("map > val threshold (colour 1-2x)" if thr else "map (uncalibrated)")
                            + ("; cyan = lesion" if lesion else ""), fontsize=6)
    fig.suptitle(f"{acc.name}: worst false positives (top) and missed lesions (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _write_figures(out_dir: Path, meta, accs) -> list[str]:
    files = []
    if _curve_figure(out_dir / "roc.png", meta, accs, "roc"):
        files.append("roc.png")
    if _curve_figure(out_dir / "pr.png", meta, accs, "pr"):
        files.append("pr.png")
    ge10 = _at_least(meta, "size_mm", 10.0)
    if ge10.any() and _curve_figure(out_dir / "roc_ge10mm.png", meta, accs, "roc", ge10,
                                    "image-level ROC, lesions >= 10 mm vs all normals"):
        files.append("roc_ge10mm.png")
    for name, acc in accs.items():
        if _montage(out_dir / f"montage_{name}.png", acc):
            files.append(f"montage_{name}.png")
    return files


# ----------------------------------------------------------------------------- CLI


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anomaly.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="data-set folder to evaluate on (see README)")
    p.add_argument("--methods", default="all", help="'all' (every method with a checkpoint) or NAME[,NAME]")
    p.add_argument("--out", required=True, type=Path, help="output folder for metrics.json/.md and figures")
    p.add_argument("--val-data", type=Path, default=None,
                   help="folder of healthy images to recompute the pixel threshold on (default: the card's calibration)")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint root (default checkpoints/)")
    p.add_argument("--max-slices", type=int, default=None, help="evaluate a seeded random subset of N slices")
    p.add_argument("--seed", type=int, default=0, help="seed for methods, bootstrap and subsets")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    p.add_argument("--reference", default="auto",
                   help="method the others are compared with, paired (default: ae when evaluated; 'none': no comparison)")
    p.add_argument("--exclude-invalid", action="store_true",
                   help="leave out slices with too little brain (default: evaluated with their score)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        res = evaluate(a.data, [a.methods], a.out, val_data=a.val_data, checkpoint_root=a.checkpoints,
                       max_slices=a.max_slices, seed=a.seed, bootstrap=a.bootstrap,
                       exclude_invalid=a.exclude_invalid, progress=not a.no_progress, reference=a.reference)
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(res))
    print(f"wrote {a.out / 'metrics.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
