"""Display windows (centre, width): CT presets in Hounsfield units, 'auto', 'file' and a typed one.

``PRESETS`` use standard radiology values, e.g. brain W80 L40 -> (40, 80). 'auto' is the
1st-99th percentile of the scan, 'file' the window stored in the file (DICOM
WindowCenter/WindowWidth), falling back to 'auto'. A typed window "L40 W80" (level = centre,
width; either order, "L:40 W:80" too) is taken as it is, in the scan's own units, for any modality.
"""

from __future__ import annotations

import re

import numpy as np

from anomaly.errors import InvalidRequestError

_NUM = r"(-?\d+(?:\.\d*)?|-?\.\d+)"
_TYPED = re.compile(rf"^\s*(?:L\s*[:=]?\s*{_NUM}\s*[,;/ ]?\s*W\s*[:=]?\s*{_NUM}|W\s*[:=]?\s*{_NUM}\s*[,;/ ]?\s*L\s*[:=]?\s*{_NUM})\s*$",
                    re.IGNORECASE)


def check_window(preset: str) -> str:
    """``preset`` if the app can use it (a preset name, 'auto', 'file' or a typed "L40 W80"), else an
    ``InvalidRequestError`` that says what to write."""
    key = str(preset).strip().lower()
    if key in DATA_PRESETS or key in PRESETS or typed_window(key) is not None:
        return preset
    raise _unreadable(preset)


def _unreadable(preset: str) -> InvalidRequestError:
    """The error for a window that is no preset and no typed "L40 W80", saying what to write."""
    if re.search(r"\b[lw]\s*[:=]?\s*-?[\d.]", str(preset).strip().lower()):
        return InvalidRequestError(f"window {preset!r}: type both a level and a width, e.g. L40 W80")
    return InvalidRequestError(f"unknown window {preset!r}: choose {' or '.join(DATA_PRESETS)}, a CT preset "
                               f"({', '.join(PRESETS)}), or type a level and width, e.g. L40 W80")


def window_text(centre: float, width: float) -> str:
    """A window as a workstation prints it: "L40 W80" (4 significant digits)."""
    def num(v: float) -> str:  # no exponent: a 16-bit image's window reads L29490 W58990
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"

    return f"L{num(float(centre))} W{num(float(width))}"


def typed_window(text: str) -> tuple[float, float] | None:
    """(centre, width) of a typed window such as "L40 W80" or "W 1500 L -600"; None when ``text`` is
    not written that way; an ``InvalidRequestError`` for a width that is not positive."""
    m = _TYPED.match(str(text))
    if m is None:
        return None
    centre, width = (float(m[1]), float(m[2])) if m[1] is not None else (float(m[4]), float(m[3]))
    if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0:
        raise InvalidRequestError(f"window width must be a positive number, got {text!r}")
    return centre, width

# (centre, width) in HU
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "ct soft tissue": (50.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DATA_PRESETS = ("auto", "file")
_MAX_SAMPLES = 2_000_000


def preset_names(scan=None) -> list[str]:
    """Presets that make sense for ``scan``: 'auto' (+ 'file' if stored), and the HU
    presets for CT (all of them when ``scan`` is None)."""
    names = ["auto"]
    if scan is None or getattr(scan, "window", None):
        names.append("file")
    if scan is None or is_ct(scan):
        names.extend(PRESETS)
    return names


def is_ct(scan) -> bool:
    """The scan's modality is CT (where the HU presets mean something)."""
    return str(getattr(scan, "modality", "")).upper() == "CT"


def auto_window(img: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> tuple[float, float]:
    """(centre, width) spanning the ``lo_pct``-``hi_pct`` percentiles of the finite values."""
    a = np.asarray(img, dtype=np.float32).ravel()
    if a.size > _MAX_SAMPLES:
        a = a[:: int(np.ceil(a.size / _MAX_SAMPLES))]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.5, 1.0
    lo, hi = (float(x) for x in np.percentile(a, [lo_pct, hi_pct]))
    if hi - lo <= 0:
        lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 0:
        return lo, 1.0
    return (lo + hi) / 2.0, hi - lo


def window_for(scan, preset: str, img: np.ndarray | None = None) -> tuple[float, float]:
    """(centre, width) of ``preset`` ('auto', 'file' or a key of ``PRESETS``, any case)
    for ``scan``. 'auto' uses ``img`` (e.g. the displayed slice) when given, else the
    whole scan; 'file' falls back to 'auto' when the file stores no valid window; a typed "L40 W80"
    is used as given (``typed_window``); a HU preset
    (``PRESETS``) applies to CT only and falls back to 'auto' for other modalities (HU windows on
    MR intensities would show a white or black image)."""
    key = str(preset).strip().lower()
    data = scan.voxels if img is None else img
    if key == "auto":
        return auto_window(data)
    if key == "file":
        win = getattr(scan, "window", None)
        if win is not None and len(win) == 2 and np.isfinite(win).all() and float(win[1]) > 0:
            return float(win[0]), float(win[1])
        return auto_window(data)
    if key in PRESETS:
        if not is_ct(scan):
            return auto_window(data)
        return PRESETS[key]
    typed = typed_window(key)
    if typed is None:
        raise _unreadable(preset)
    return typed


def apply_window(img: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window: centre - width/2 -> 0, centre + width/2 -> 255, clipped, as uint8.
    NaN -> 0; a width <= 0 thresholds at ``centre``."""
    a = np.asarray(img, dtype=np.float32)
    centre, width = float(centre), float(width)
    if not np.isfinite(centre) or not np.isfinite(width):
        raise ValueError(f"window centre and width must be finite, got ({centre}, {width})")
    if width <= 0:
        out = np.where(a > centre, 255, 0)
    else:
        lo = centre - width / 2.0
        out = np.clip((a - lo) / width * 255.0, 0, 255)
        out = np.rint(out)
    out = np.where(np.isnan(a), 0, out)
    return out.astype(np.uint8)
