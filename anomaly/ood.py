"""Out-of-distribution verdict: is this scan the kind of image the models were trained on?

The models learn healthy adult T1-weighted brain MR. The verdict combines the file's
metadata (modality, sequence timing, body part) with the scan itself (whether its slices show
the dark background that surrounds a head in MR, and how far its healthy-calibrated scores
lie from the healthy validation set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OFF_SCALE_PERCENTILE = 99.0  # median slice percentile above this -> "off the scale everywhere"
# an MR slice of a head has air around it: the rim of the image sits at the bottom of the intensity
# range (0.00 on every bundled scan, template, example and the DICOM series); noise, photos and
# screenshots do not (random noise: 0.50)
BACKGROUND_LEVEL = 0.2
RIM_FRACTION = 0.05


@dataclass
class OODVerdict:
    in_distribution: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def banner(self) -> str:
        if self.in_distribution:
            return ""
        return ("**The models were not trained on this kind of image** (they learned healthy adult T1-weighted "
                "brain MR). Maps are shown, but scores are not calibrated for it. Why: " + "; ".join(self.reasons) + ".")


def metadata_reasons(scan) -> list[str]:
    """Reasons from the file's metadata alone (empty when nothing speaks against T1 brain MR)."""
    r: list[str] = []
    mod = (scan.modality or "unknown").upper()
    if mod not in ("MR", "UNKNOWN", "OT", ""):
        r.append(f"modality is {mod}, not MR")
    meta = scan.meta or {}
    body = str(meta.get("BodyPartExamined", "")).upper()
    if body and not any(k in body for k in ("BRAIN", "HEAD", "SKULL", "NEURO")):
        r.append(f"body part is {body.title()}")
    te = _num(meta.get("EchoTime"))
    tr = _num(meta.get("RepetitionTime"))
    ti = _num(meta.get("InversionTime"))
    desc = f"{scan.series_description} {meta.get('ScanningSequence', '')} {meta.get('SequenceName', '')}".upper()
    if any(k in desc for k in ("T2", "FLAIR", "PD", "PROTON", "DWI", "DIFFUSION", "SWI")) and "T1" not in desc:
        r.append("the series description names a non-T1 contrast")
    elif mod == "MR" and te is not None and tr is not None and ti is None and (te > 30 or tr > 1500):
        r.append(f"sequence timing (TE {te:g} ms, TR {tr:g} ms) is not T1-weighted")
    return r


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def image_reasons(percentiles: dict[str, np.ndarray], valid: np.ndarray) -> list[str]:
    """Reasons from the scan itself: calibrated scores off the scale on (almost) every slice."""
    r = []
    off = []
    for name, p in percentiles.items():
        p = np.asarray(p)[np.asarray(valid, bool)]
        if p.size and np.isfinite(p).all() and float(np.median(p)) >= OFF_SCALE_PERCENTILE:
            off.append(name)
    if off and len(off) == len(percentiles):
        r.append("its reconstruction errors lie beyond the healthy validation range on most slices "
                 f"for every method ({', '.join(off)})")
    return r


def rim_level(image: np.ndarray) -> float:
    """Median of the image's outer rim (5% of its side) on its own 1st-99th percentile range (0-1)."""
    a = np.asarray(image, np.float64)
    if a.ndim != 2 or min(a.shape) < 2 or not np.isfinite(a).any():
        return 0.0
    a = np.where(np.isfinite(a), a, np.nan)
    lo, hi = np.nanpercentile(a, [1, 99])
    if hi <= lo:
        return 0.0
    k = max(1, int(round(RIM_FRACTION * min(a.shape))))
    rim = np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])
    if not np.isfinite(rim).any():
        return 0.0
    return float(np.clip((np.nanmedian(rim) - lo) / (hi - lo), 0.0, 1.0))


def content_reasons(scan) -> list[str]:
    """Reasons from the pixels alone: no dark background around the anatomy on most slices."""
    v = np.asarray(scan.voxels)
    levels = [rim_level(s) for s in v if np.isfinite(s).any() and np.nanstd(s) > 0]
    if levels and float(np.median(levels)) > BACKGROUND_LEVEL:
        return ["its slices have no dark background around the anatomy, as an MR image of a head has "
                "(a photo, a screenshot or noise?)"]
    return []


def verdict(scan, percentiles: dict[str, np.ndarray] | None = None, valid: np.ndarray | None = None) -> OODVerdict:
    reasons = metadata_reasons(scan) + content_reasons(scan)
    if percentiles:
        reasons += image_reasons(percentiles, valid if valid is not None else np.ones(1, bool))
    return OODVerdict(not reasons, reasons)
