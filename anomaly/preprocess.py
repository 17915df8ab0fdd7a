"""The one preprocessing path shared by training, evaluation, the app and batch scoring.

Per slice: brain extraction -> square crop around the brain (+margin) -> resize to the
model size (default 128x128) -> robust intensity normalisation (background level -> 0,
75th percentile of the brain -> 0.85, clipped to [0, 1.5]) -> background set to 0.
``PreparedSlices.to_original`` brings model-space maps back to the input's pixels.
No other module crops, resizes or normalises images for a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from anomaly.errors import InvalidImageError

MODEL_SIZE = 128
CROP_MARGIN = 0.06  # fraction of the brain's extent added on each side
MIN_BRAIN_FRACTION = 0.25  # slices with less brain than this x the largest slice are not scored
MIN_BRAIN_PIXELS = 64
NORM_CLIP = 1.5
NORM_REF = 0.85  # the brain's 75th percentile maps here
PREPROCESS_VERSION = 4  # bump when preprocessing changes (invalidates caches); 3: scored slices by brain area in the scan's pixels; 4: crop boxes square in mm for non-square pixels


@dataclass
class PreparedSlices:
    """Model-ready slices and the geometry to map results back.

    images: (N, S, S) float32 normalised; masks: (N, S, S) bool brain masks;
    boxes: (N, 4) int (row0, col0, rows, cols) crop in original pixels, square in mm (in pixels too
    for square pixels);
    original_masks: (N, H, W) bool; valid: (N,) bool slices with enough brain to score.
    """

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    original_shape: tuple[int, int]
    original_masks: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "PreparedSlices":
        """The slices ``idx`` (same geometry)."""
        idx = np.asarray(idx, int)
        return PreparedSlices(self.images[idx], self.masks[idx], self.boxes[idx], self.original_shape,
                              self.original_masks[idx], self.valid[idx])

    def to_model(self, arrays: np.ndarray, threshold: float | None = 0.5) -> np.ndarray:
        """Original-grid arrays (N, H, W) (e.g. lesion masks) -> model space (N, S, S).

        With ``threshold`` the result is boolean (for masks); None keeps floats."""
        s = self.images.shape[-1]
        out = np.stack([_resize(_crop(np.asarray(a, np.float32), tuple(b)), s, "bilinear")
                        for a, b in zip(arrays, self.boxes)]) if len(arrays) else np.zeros((0, s, s), np.float32)
        return out > threshold if threshold is not None else out

    def slice_to_original(self, model_map: np.ndarray, index: int, order: int = 1) -> np.ndarray:
        """One model-space map (S, S) of slice ``index`` -> that slice's original grid (H, W).

        Each slice has its own crop box: a map of slice ``index`` must go back through box
        ``index`` (``to_original(maps[i:i+1])`` would use box 0, the first slice's)."""
        return self.subset([index]).to_original(np.asarray(model_map)[None], order)[0]

    def to_original(self, maps: np.ndarray, order: int = 1) -> np.ndarray:
        """Model-space maps (N, S, S) of slices 0..N-1 -> original pixel grid (N, H, W); 0 outside the crop."""
        maps = np.asarray(maps, dtype=np.float32)
        h, w = self.original_shape
        out = np.zeros((len(maps), h, w), np.float32)
        for i, (m, (r0, c0, n_rows, n_cols)) in enumerate(zip(maps, self.boxes)):
            t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
            mode = "bilinear" if order == 1 else "nearest"
            kw = {"align_corners": False} if mode == "bilinear" else {}
            big = F.interpolate(t, size=(int(n_rows), int(n_cols)), mode=mode, **kw)[0, 0].numpy()
            rs, cs = max(r0, 0), max(c0, 0)
            re_, ce = min(r0 + n_rows, h), min(c0 + n_cols, w)
            if re_ > rs and ce > cs:
                out[i, rs:re_, cs:ce] = big[rs - r0 : re_ - r0, cs - c0 : ce - c0]
        return out


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """Classical head/brain foreground: Otsu threshold, largest component, holes filled."""
    img = np.nan_to_num(np.asarray(img, np.float32))
    lo, hi = np.percentile(img, [1, 99.5])
    if hi - lo <= 1e-6:
        return np.zeros(img.shape, bool)
    x = np.clip((img - lo) / (hi - lo), 0, 1)
    t = _otsu(x[x > 0.02]) if np.count_nonzero(x > 0.02) > 16 else 0.5
    m = x > max(0.5 * t, 0.04)
    m = ndimage.binary_opening(m, iterations=1)
    lab, n = ndimage.label(m)
    if n == 0:
        return np.zeros(img.shape, bool)
    sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
    m = lab == (int(np.argmax(sizes)) + 1)
    m = ndimage.binary_closing(m, iterations=2)
    return ndimage.binary_fill_holes(m)


BrainExtractor = "callable (N, H, W) float32 -> (N, H, W) bool"
_extractor = None


def set_brain_extractor(fn) -> None:
    """Install a brain extractor (e.g. the trained UNet); ``None`` restores the default."""
    global _extractor
    _extractor = fn


def extract_brain(slices: np.ndarray) -> np.ndarray:
    """Brain masks for (N, H, W) slices: the trained extractor if installed, else classical."""
    global _extractor
    if _extractor is None:
        try:
            from anomaly.brainmask import default_extractor

            _extractor = default_extractor()
        except Exception:  # no checkpoint: classical fallback
            _extractor = False
    if _extractor:
        return _extractor(slices)
    return np.stack([foreground_mask(s) for s in slices]) if len(slices) else np.zeros((0, 1, 1), bool)


def extractor_id() -> str:
    """Which brain extractor preprocessing uses ('classical' or the UNet checkpoint's hash)."""
    import json
    from pathlib import Path

    card = Path(__file__).resolve().parents[1] / "checkpoints" / "brainmask" / "card.json"
    try:
        return "unet-" + json.loads(card.read_text())["checkpoint_hash"][:8]
    except (OSError, KeyError, ValueError):
        return "classical"


def informative_slices(masks: np.ndarray) -> np.ndarray:
    """(N,) bool: slices whose brain area is at least MIN_BRAIN_FRACTION of the largest.

    ``masks`` in the scan's own pixels (one plane: the same pixel size on every slice), not the
    model frame, where every slice is cropped to its own brain box and a small section fills it."""
    areas = masks.reshape(len(masks), -1).sum(1)
    if len(areas) == 0:
        return np.zeros(0, bool)
    return (areas >= MIN_BRAIN_FRACTION * areas.max()) & (areas >= MIN_BRAIN_PIXELS)


def square_box(mask: np.ndarray, margin: float = CROP_MARGIN, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of a box around the mask that is square in millimetres (the whole
    image if the mask is empty). ``aspect``: a row's height over a column's width (row spacing /
    column spacing; 1 for square pixels, where the box is square in pixels too), so that resizing
    the box to the model's square frame gives square model pixels whatever the scan's pixels were."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    aspect = float(aspect) if np.isfinite(aspect) and aspect > 0 else 1.0
    if len(rows) == 0:
        side = max(int(np.ceil(h * aspect - 1e-9)), w)  # in column pixels
        n_rows = int(round(side / aspect))
        return ((h - n_rows) // 2, (w - side) // 2, n_rows, side)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = int(np.ceil(max((r1 - r0) * aspect, c1 - c0) * (1 + 2 * margin))) + 2  # in column pixels
    n_rows = int(round(side / aspect))  # = side for square pixels
    rc, cc = (r0 + r1) / 2, (c0 + c1) / 2
    return (int(round(rc - n_rows / 2)), int(round(cc - side / 2)), n_rows, side)


def _crop(img: np.ndarray, box: tuple[int, int, int, int], fill: float = 0.0) -> np.ndarray:
    r0, c0, n_rows, n_cols = (int(v) for v in box)
    h, w = img.shape
    out = np.full((n_rows, n_cols), fill, img.dtype)
    rs, cs, re_, ce = max(r0, 0), max(c0, 0), min(r0 + n_rows, h), min(c0 + n_cols, w)
    if re_ > rs and ce > cs:
        out[rs - r0 : re_ - r0, cs - c0 : ce - c0] = img[rs:re_, cs:ce]
    return out


def _resize(img: np.ndarray, size: int, mode: str = "area") -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    kw = {}
    if mode == "area" and min(img.shape) < size:
        mode = "bilinear"
        if max(img.shape) > size:  # a rectangular crop (non-square pixels), shrunk along one side only
            kw["antialias"] = True
    kw.update({"align_corners": False} if mode == "bilinear" else {})
    return F.interpolate(t, size=(size, size), mode=mode, **kw)[0, 0].numpy()


def normalise_intensity(img: np.ndarray, mask: np.ndarray, background: float) -> np.ndarray:
    """(x - background) / ((p75(brain) - background) / 0.85), clipped to [0, NORM_CLIP].

    The brain's 75th percentile maps to 0.85 (healthy white matter lands near 1). A
    percentile in the middle of the distribution is not moved much by a bright or dark
    lesion, unlike the 99th (a bright haemorrhage would darken the whole slice)."""
    scale = intensity_scale(img, mask, background)
    if scale is None:
        return np.zeros_like(img, np.float32)
    return np.clip((img - background) / scale, 0.0, NORM_CLIP).astype(np.float32)


def intensity_scale(img: np.ndarray, mask: np.ndarray, background: float) -> float | None:
    """The divisor of ``normalise_intensity`` for a slice ((p75(brain) - background) / 0.85); None
    where it is not positive (then the slice normalises to zeros). A model-space value v is scan
    intensity ``v * scale + background``."""
    vals = img[mask]
    p75 = float(np.percentile(vals, 75)) if vals.size else float(img.max())
    scale = (p75 - background) / NORM_REF
    return float(scale) if np.isfinite(scale) and scale > 1e-6 else None


def background_level(slices: np.ndarray) -> float:
    """The background intensity of a stack of slices (its 0.5th percentile), as preprocessing uses it."""
    return float(np.percentile(slices, 0.5))


def check_pixels(slices: np.ndarray) -> np.ndarray:
    """Validate and clean pixel data; raise ``InvalidImageError`` with a clear message."""
    a = np.asarray(slices)
    if a.ndim != 3:
        raise InvalidImageError(f"expected slices (N, H, W), got an array with shape {a.shape}")
    if min(a.shape[1:]) < 8:
        raise InvalidImageError(
            f"image is {a.shape[1]}x{a.shape[2]} pixels: too small to analyse (at least 8x8 needed)"
        )
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        raise InvalidImageError("image holds no finite values (all NaN or infinite)")
    if not finite.all():
        a = np.where(finite, a, float(np.min(a[finite])))
    if float(a.max() - a.min()) <= 1e-6:
        raise InvalidImageError("image is constant: there is nothing to analyse")
    return a


def preprocess_slices(
    slices: np.ndarray, masks: np.ndarray | None = None, size: int = MODEL_SIZE,
    pixel_spacing: tuple[float, float] | None = None,
) -> PreparedSlices:
    """Slices (N, H, W) of one scan -> ``PreparedSlices`` (see module docstring).

    ``pixel_spacing`` (row, column) in mm, where known: non-square pixels (a rectangular field of
    view; a coronal or sagittal plane of thick slices) get a crop box that is square in mm, so the
    model sees the anatomy in its true proportions. None or square pixels: the box is square in pixels."""
    a = check_pixels(slices)
    if masks is None:
        masks = extract_brain(a)
    masks = np.asarray(masks, bool)
    background = background_level(a)
    n = len(a)
    images = np.zeros((n, size, size), np.float32)
    small = np.zeros((n, size, size), bool)
    boxes = np.zeros((n, 4), np.int64)
    aspect = 1.0
    if pixel_spacing is not None:
        dr, dc = (float(v) for v in pixel_spacing)
        if dr > 0 and dc > 0 and np.isfinite(dr / dc) and abs(dr / dc - 1.0) > 1e-3:
            aspect = dr / dc
    for i in range(n):
        box = square_box(masks[i], aspect=aspect)
        boxes[i] = box
        norm = normalise_intensity(a[i], masks[i], background) if masks[i].any() else np.zeros_like(a[i])
        crop = _crop(norm * masks[i], box)
        mcrop = _crop(masks[i].astype(np.float32), box)
        images[i] = _resize(crop, size)
        small[i] = _resize(mcrop, size, "bilinear") > 0.5
    images *= small
    # scored slices: enough brain in the scan's own pixels (a skull-base section is small there, though
    # it fills its own brain box in the model frame), and enough of the model frame to score
    enough = small.reshape(n, -1).sum(1) >= MIN_BRAIN_PIXELS
    valid = informative_slices(masks) & enough if n > 1 else enough
    return PreparedSlices(images, small, boxes, a.shape[1:], masks, valid)


def preprocess_scan(scan, plane: str = "axial", indices=None, size: int = MODEL_SIZE) -> PreparedSlices:
    """Preprocess slices of a ``Scan`` in ``plane`` (all slices if ``indices`` is None)."""
    from anomaly.scan import plane_size

    n = plane_size(scan, plane)
    idx = range(n) if indices is None else indices
    slices = np.stack([scan.slice(i, plane) for i in idx])
    spacing = scan.slice_spacing(plane) if scan.spacing_known else None
    return preprocess_slices(slices, size=size, pixel_spacing=spacing)
