"""Out-of-distribution verdict: is this scan the kind of image the models were trained on?

The models learn healthy adult T1-weighted brain MR. The verdict combines the file's
metadata (modality, sequence timing, body part) with the scan itself: whether its slices show
the dark background that surrounds a head in MR, whether the head holds the many grey levels of
a brain (not a mask, a drawing or text), and, on an axial volume, how far the healthy-calibrated
scores of fixed reference models lie from the healthy validation set. One verdict per scan:
it does not depend on which methods are shown (``anomaly.analysis.scan_verdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OFF_SCALE_PERCENTILE = 99.0  # median slice percentile above this -> "off the scale everywhere"
# The score check uses the same reference models on every scan, whichever methods are shown, so
# that a scan gets one verdict (it used to need every shown method off the scale: ticking the
# z-score baseline took the warning away from a healthy brain of another scanner). A majority of
# them off the scale on most slices of a scan with at least MIN_SCORED_SLICES scored slices; one
# slice alone cannot tell a strange image from a lesion. Measured (median slice percentile
# ae / vae / dae): the ITK subject (another scanner) 100 / 96 / 100; Colin27 62 / 31 / 89; MNI152
# 41 / 23 / 61; the bundled examples at most 31 / 21 / 59.
REFERENCE_METHODS = ("ae", "vae", "dae")
MIN_SCORED_SLICES = 5
# A brain MR slice has many grey levels inside the head (grey and white matter, CSF); a mask, a
# drawing or text has a few. Entropy (bits) of the model-frame intensities inside the brain mask,
# 64 bins: 4.2-5.5 on the bundled scans, templates, ITK subject and DICOM series, at least 4.6 on
# every slice of the cohort's test, held-out, domain-shift and val_normal splits; 1.9 on a lesion
# mask PNG, 0.2 on a grey ellipse, 0 on white text.
MIN_BRAIN_ENTROPY_BITS = 3.0
# Inside a brain's outline almost nothing is as dark as the background (model-frame intensity below
# DARK_LEVEL, 0 = background, 0.85 = the brain's 75th percentile): at most 0.048 of the pixels on
# every slice of the cohort's test, held-out, domain-shift and val_normal splits, 0.010 on the ITK
# subject, 0.003 on the DICOM series; anti-aliased text on black 0.14-0.47 (its entropy, 3.8-4.1
# bits, passes the check above), a lesion mask PNG 0.15.
DARK_LEVEL = 0.15
MAX_DARK_INSIDE = 0.10
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
    """Reasons from the scan's scores: most ``REFERENCE_METHODS`` (of those given) off the scale on
    most scored slices. Needs two of them and ``MIN_SCORED_SLICES`` scored slices."""
    v = np.asarray(valid, bool)
    ref = {n: np.asarray(percentiles[n]) for n in REFERENCE_METHODS if n in percentiles}
    if len(ref) < 2 or v.size != len(next(iter(ref.values()))) or int(v.sum()) < MIN_SCORED_SLICES:
        return []
    off = [n for n, p in ref.items() if np.isfinite(p[v]).all() and float(np.median(p[v])) >= OFF_SCALE_PERCENTILE]
    if len(off) > len(ref) / 2:
        return ["its reconstruction errors lie beyond the healthy validation range on most slices "
                f"for {len(off)} of the {len(ref)} reference models ({' and '.join(off)})"]
    return []


def _inside_values(prepared) -> np.ndarray | None:
    """The model-frame intensities inside the brain masks of the scored slices; None with fewer than 64."""
    v = np.asarray(prepared.valid, bool)
    vals = np.asarray(prepared.images)[v][np.asarray(prepared.masks, bool)[v]]
    vals = vals[np.isfinite(vals)]
    return vals if vals.size >= 64 else None


def dark_inside_fraction(prepared) -> float | None:
    """Share of the scored slices' brain-mask pixels as dark as the background (model frame)."""
    vals = _inside_values(prepared)
    return None if vals is None else float((vals < DARK_LEVEL).mean())


def brain_entropy_bits(prepared) -> float | None:
    """Entropy (bits, 64 bins) of the model-frame intensities inside the brain masks of the scored
    slices; None without enough of them."""
    vals = _inside_values(prepared)
    if vals is None:
        return None
    h = np.histogram(vals, bins=64)[0].astype(np.float64)
    h = h[h > 0] / h.sum()
    return float(-(h * np.log2(h)).sum())


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


def content_reasons(scan, prepared=None) -> list[str]:
    """Reasons from the pixels alone: no dark background around the anatomy on most slices; with the
    ``prepared`` slices, too few grey levels inside the head for a brain (a mask, a drawing, text)."""
    v = np.asarray(scan.voxels)
    levels = [rim_level(s) for s in v if np.isfinite(s).any() and np.nanstd(s) > 0]
    if levels and float(np.median(levels)) > BACKGROUND_LEVEL:
        return ["its slices have no dark background around the anatomy, as an MR image of a head has "
                "(a photo, a screenshot or noise?)"]
    bits = None if prepared is None else brain_entropy_bits(prepared)
    if bits is not None and bits < MIN_BRAIN_ENTROPY_BITS:
        return ["the image inside the head outline has few grey levels, unlike the grey and white matter of a "
                "brain MR (a mask, a drawing or text?)"]
    dark = None if prepared is None else dark_inside_fraction(prepared)
    if dark is not None and dark > MAX_DARK_INSIDE:
        return [f"{dark:.0%} of the image inside the head outline is as dark as the background, unlike a brain MR "
                "(text, a drawing or a mask?)"]
    return []


def verdict(scan, percentiles: dict[str, np.ndarray] | None = None, valid: np.ndarray | None = None,
            prepared=None) -> OODVerdict:
    """The verdict from the file's metadata, its pixels (``prepared``: the slices as the models see
    them) and the reference models' percentiles (``REFERENCE_METHODS``; others are ignored)."""
    reasons = metadata_reasons(scan) + content_reasons(scan, prepared)
    if percentiles:
        reasons += image_reasons(percentiles, valid if valid is not None else np.ones(1, bool))
    return OODVerdict(not reasons, reasons)
