"""One pseudo-subject -> slices (or a whole volume) on disk, with synthetic lesions.

A ``Job`` describes one pseudo-subject of one split: which real brain (``source``) and
image variant (``stripped`` / ``skull``), its seed, how many synthetic lesions to draw
and which slices to keep. ``run_job`` makes the pseudo-subject (``anomaly.data.augment``),
draws each lesion with ``anomaly.data.lesions.add_lesion`` on the 3D volume (so masks
align and lesions span slices), applies the scanner-like intensity variation, picks
axial slices with the same brain-area criterion inference uses
(``anomaly.preprocess.informative_slices``) and writes them in the data-set format
(``anomaly.data.folder``): images/, masks/ (lesion slices), brainmasks/ (ground-truth
brain masks, PNG 0/255, for the brain extractor). It returns the labels.csv rows.

Every lesion is SYNTHETIC, drawn on real healthy anatomy.

Lesion subjects: one warp (anatomy) carries ``n_lesions`` lesion *variants*; each
variant contributes only slices through its own lesion, at axial positions no other
variant or normal slice of the subject uses, so no slice of anatomy appears twice.
Normal slices of a lesion subject come from the same warp without any lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly.data.augment import intensity_augment, load_source, spatial_augment
from anomaly.data.folder import write_image, write_mask
from anomaly.data.lesions import feret_diameter
from anomaly.preprocess import informative_slices

LESION_MIN_AREA = 0.25  # lesion slices: lesion area >= this x its largest cross-section


def lesion_api():
    """(add_lesion, LESION_KINDS) from ``anomaly.data.lesions``."""
    from anomaly.data.lesions import LESION_KINDS, add_lesion

    return add_lesion, tuple(LESION_KINDS)


_CENTRED_KINDS = ("tumour", "tumour_enhancing", "haemorrhage")


def add_lesion_local(volume, brain, kind, size_mm, rng, spacing, wm_prob=None, gm_prob=None, zrange=None):
    """``add_lesion`` on a crop of the volume (same result type, full-size arrays).

    ``add_lesion`` estimates tissue classes and distance maps over the whole volume it is
    given, which costs seconds per lesion at 1.5 mm; the cohort therefore gives it a crop:
    tumours and haemorrhages get a cube of half-side 1.6 x size + 12 mm around a centre
    drawn here (a brain voxel at least size/2 + 1 mm from the brain's edge, in tissue
    brighter than the brain's median: not in the ventricles) - larger than the reach of
    their mass effect, so nothing changes at the crop's faces; strokes and WM lesions
    (placed by ``add_lesion`` at the cortex / in white matter) get a full-width axial slab
    of half-thickness max(30, 0.7 x size + 15) mm. ``zrange`` (lo, hi) limits the axial
    position of the centre (informative slices).
    """
    add_lesion, _ = lesion_api()
    sp = np.asarray(spacing, float)
    shape = np.asarray(volume.shape)
    zlo, zhi = (0, int(shape[0]) - 1) if zrange is None else (int(zrange[0]), int(zrange[1]))
    crop = lambda a, sl: None if a is None else a[sl]  # noqa: E731
    for attempt in range(4):
        if kind in _CENTRED_KINDS:
            st = max(1, int(round(2.0 / sp.min())))
            sub = brain[::st, ::st, ::st]
            d = ndimage.distance_transform_edt(np.pad(sub, 1), sampling=sp * st)[1:-1, 1:-1, 1:-1]
            sm = ndimage.gaussian_filter(np.asarray(volume, np.float32)[::st, ::st, ::st], 1.0)
            med = float(np.median(sm[sub])) if sub.any() else 0.0
            need = 0.5 * size_mm + 1.0
            zz = np.arange(sub.shape[0])[:, None, None] * st
            ok = sub & (sm >= med) & (zz >= zlo) & (zz <= zhi)
            cand = ok & (d >= need)
            if not cand.any():
                cand = ok & (d >= 0.85 * d[ok].max()) if ok.any() else sub & (d >= 0.85 * d.max())
            pts = np.argwhere(cand)
            c = pts[int(rng.integers(len(pts)))] * st
            half = np.ceil((1.6 * size_mm + 12.0) / sp).astype(int)
            lo = np.maximum(c - half, 0)
            hi = np.minimum(c + half + 1, shape)
            centre = tuple(int(a) for a in c - lo)
        else:
            zc = int(rng.integers(zlo, zhi + 1))
            half = int(np.ceil(max(30.0, 0.7 * size_mm + 15.0) / sp[0]))
            lo = np.array([max(0, zc - half), 0, 0])
            hi = np.array([min(int(shape[0]), zc + half + 1), shape[1], shape[2]])
            centre = None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        try:
            v, m, info = add_lesion(np.ascontiguousarray(volume[sl]), np.ascontiguousarray(brain[sl]), kind,
                                    float(size_mm), rng, spacing=tuple(sp), wm_prob=crop(wm_prob, sl),
                                    gm_prob=crop(gm_prob, sl), centre=centre)
        except ValueError:
            if attempt == 3:
                raise
            continue
        out = np.array(volume, np.float32, copy=True)
        out[sl] = v
        mask = np.zeros(volume.shape, bool)
        mask[sl] = m
        info.centre = tuple(int(a + b) for a, b in zip(info.centre, lo))
        return out, mask, info
    raise RuntimeError("unreachable")


@dataclass
class Job:
    split: str
    subject: str  # pseudo-subject id (one anatomy); never in two splits of one family
    source: str  # 'mni152' | 'colin27' | 'itk'
    variant: str  # 'stripped' | 'skull'
    seed: int
    out: str  # split folder
    lesions: list = field(default_factory=list)  # [(kind, size_mm), ...]
    normal_step: int = 2  # keep every n-th informative slice for healthy subjects
    max_normal: int | None = None  # at most this many normal slices (evenly spread)
    slices_per_lesion: int = 4
    volume: bool = False  # write the whole volume (NIfTI) instead of slices
    label_column: str = "label"  # 'truth' for the unlabeled split (label left empty)
    write_masks: bool = True
    spacing: float | None = None  # working grid (None: augment.WORK_SPACING; ITK keeps 2 mm)
    augment: bool = True  # False: the real volume as it is (domain-shift set)
    prefix: str | None = None  # file-name prefix (default: subject)
    level_matched: bool = False  # normals at the lesion slices' levels, one per lesion slice (_level_matched)


def lesion_contrast(lesioned: np.ndarray, healthy: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> float:
    """How much a lesion changes its slice: mean |lesioned - healthy| inside the lesion mask, in
    units of the healthy slice's 99th-percentile brain intensity (about what preprocessing maps to 1).

    ``healthy`` is the same slice of the same pseudo-subject without the lesion, with the same
    intensity variation. 0.1 = the lesion moves its pixels by a tenth of bright white matter's
    intensity on average.
    """
    lesion = np.asarray(lesion, bool)
    if not lesion.any():
        return 0.0
    b = np.asarray(brain, bool)
    ref = float(np.percentile(healthy[b], 99)) if b.any() else float(np.percentile(healthy, 99))
    d = np.abs(np.asarray(lesioned, np.float64) - np.asarray(healthy, np.float64))[lesion]
    return float(d.mean() / max(ref, 1e-6))


def _evenly(idx: list[int], k: int, rng: np.random.Generator | None = None) -> list[int]:
    if k <= 0 or not idx:
        return []
    if len(idx) <= k:
        return list(idx)
    pos = np.linspace(0, len(idx) - 1, k)
    if rng is not None and k > 1:  # jitter within the spacing
        step = (len(idx) - 1) / (k - 1)
        pos = np.clip(pos + rng.uniform(-0.3, 0.3, k) * step, 0, len(idx) - 1)
    out = sorted({idx[int(round(p))] for p in pos})
    return out


LEVEL_PRIOR = (0.55, 0.22)  # mean, sd of lesion-slice level, relative to the informative z range (measured)


def _level_matched(free: list[int], k: int, rng: np.random.Generator, lesion_zs: list[int],
                   zrange: tuple[int, int] | None) -> list[int]:
    """``k`` of the ``free`` slice indices at the levels of the lesion slices.

    Lesion centres are placed where a lesion fits inside the brain, so lesion slices sit at
    mid levels; normal slices spread evenly over all levels would include more skull-base and
    vertex slices, where every method's residual is higher, and an image-level AUROC would then
    measure slice level instead of lesions. In a subject with lesions, each pick is the free
    slice nearest to one of its lesion slices (taken in turn); in a subject without, slices are
    drawn with a Gaussian prior over the relative level (LEVEL_PRIOR, measured on lesion slices).
    """
    if k <= 0 or not free:
        return []
    avail = sorted(set(int(z) for z in free))
    if lesion_zs:
        targets = [int(z) for z in lesion_zs]
        rng.shuffle(targets)
        out: list[int] = []
        i = 0
        while len(out) < k and avail:
            t = targets[i % len(targets)]
            i += 1
            d = np.abs(np.asarray(avail) - t) + rng.random(len(avail)) * 0.5  # random tie-break
            out.append(avail.pop(int(np.argmin(d))))
        return sorted(out)
    lo, hi = zrange if zrange else (min(avail), max(avail))
    rel = (np.asarray(avail, float) - lo) / max(1, hi - lo)
    w = np.exp(-0.5 * ((rel - LEVEL_PRIOR[0]) / LEVEL_PRIOR[1]) ** 2)
    k = min(k, len(avail))
    return sorted(int(z) for z in rng.choice(avail, size=k, replace=False, p=w / w.sum()))


def _pseudo_subject(job: Job):
    src = load_source(job.source, job.spacing)
    if job.augment:
        ps = spatial_augment(src, job.seed, variants=[job.variant])
    else:
        ps = src
    if job.variant not in ps.images:
        raise ValueError(f"source {job.source} has no {job.variant!r} image (has {list(ps.images)})")
    return ps


def run_job(job: Job) -> list[dict]:
    """Make the pseudo-subject, draw its lesions, write its slices; return labels.csv rows."""
    rng = np.random.default_rng(job.seed)
    ps = _pseudo_subject(job)
    img = ps.images[job.variant]
    brain = ps.brain
    spacing = ps.spacing
    stripped = job.variant == "stripped"
    int_seed = int(rng.integers(2**31))

    def finish(v):
        if not job.augment:
            return np.asarray(v, np.float32)
        return intensity_augment(v, int_seed, keep_zero=~brain if stripped else None)

    skull = int(job.variant == "skull")
    base_row = {"subject": job.subject, "source": job.source, "skull": skull}
    out = Path(job.out)
    prefix = job.prefix or job.subject
    inf_mask = informative_slices(brain)
    inf = np.flatnonzero(inf_mask)
    zrange = (int(inf.min()), int(inf.max())) if len(inf) else None

    def lesion(vol, kind, size):
        return add_lesion_local(vol, brain, kind, size, rng, spacing, wm_prob=ps.wm, gm_prob=ps.gm, zrange=zrange)

    # ---- whole volume
    if job.volume:
        row = dict(base_row)
        kinds, sizes = [], []
        mask3 = np.zeros(brain.shape, bool)
        vol = img
        for kind, size in job.lesions:
            vol, m, info = lesion(vol, kind, size)
            mask3 |= m
            kinds.append(info.kind)
            sizes.append(round(float(info.size_mm), 1))
        vol = finish(vol)
        name = f"{prefix}"
        write_image(out, name, vol, spacing=spacing)
        if mask3.any() and job.write_masks:
            write_mask(out, name, mask3, spacing=spacing)
        _write_brainmask(out, name, brain, spacing)
        lab = int(mask3.any())
        row.update(file=f"{name}.nii.gz", kind="+".join(kinds) if kinds else "none",
                   size_mm=";".join(f"{s:g}" for s in sizes) if sizes else "", slice="all",
                   lesion_px=int(mask3.sum()))
        row[job.label_column] = lab
        if job.label_column != "label":
            row["label"] = ""
        return [row]

    used: set[int] = set()
    picks: list[tuple[int, np.ndarray, np.ndarray | None, object]] = []  # (z, slice, lesion2d, info)
    contrast: dict[int, float] = {}  # lesion slice z -> lesion_contrast
    healthy = finish(img) if job.lesions else None  # the lesion-free twin (no draw from rng)

    # ---- lesion variants
    for kind, size in job.lesions:
        vol, m, info = lesion(img, kind, size)
        areas = m.reshape(len(m), -1).sum(1)
        if areas.max() == 0:
            continue
        cand = [int(z) for z in inf if areas[z] >= max(1, LESION_MIN_AREA * areas.max()) and z not in used]
        zs = _evenly(cand, job.slices_per_lesion)
        if not zs:
            continue
        vol = finish(vol)
        for z in zs:
            picks.append((z, vol[z], m[z], info))
            contrast[z] = lesion_contrast(vol[z], healthy[z], m[z], brain[z])
            used.add(z)
        # keep a guard band of one slice around each lesion's extent for normal slices
        lz = np.flatnonzero(areas)
        used.update(range(int(lz.min()) - 1, int(lz.max()) + 2))

    # ---- normal slices (same anatomy, no lesion)
    free = [int(z) for z in inf if z not in used]
    if job.level_matched and job.max_normal is not None:
        # a lesional subject gives as many normal slices as lesion slices (so the skull/stripped
        # and anatomy mix of normals follows that of the lesions); a healthy one gives max_normal
        zs = _level_matched(free, len(picks) if picks else job.max_normal, rng, [p[0] for p in picks], zrange)
    elif job.max_normal is not None:
        zs = _evenly(free[:: max(1, job.normal_step)] if not job.lesions else free, job.max_normal, rng)
    else:
        off = int(rng.integers(max(1, job.normal_step)))
        zs = free[off :: max(1, job.normal_step)]
    if zs:
        healthy = finish(img) if healthy is None else healthy
        for z in zs:
            picks.append((z, healthy[z], None, None))

    # ---- write (neutral, shuffled names: a file name never reveals the label)
    order = rng.permutation(len(picks))
    rows = []
    for n, i in enumerate(order):
        z, sl, les, info = picks[i]
        name = f"{prefix}_{n:03d}"
        write_image(out, name, sl)
        lab = int(les is not None)
        if lab and job.write_masks:
            write_mask(out, name, les)
        _write_brainmask(out, name, brain[z])
        row = dict(base_row)
        row.update(file=f"{name}.png",
                   kind=info.kind if lab else "none",
                   size_mm=round(float(info.size_mm), 1) if lab else "",
                   slice=int(z), lesion_px=int(les.sum()) if lab else 0,
                   slice_extent_mm=round(feret_diameter(les, spacing), 1) if lab else "",
                   lesion_contrast=round(contrast[z], 4) if lab else "")
        row[job.label_column] = lab
        if job.label_column != "label":
            row["label"] = ""
        rows.append(row)
    return rows


def _write_brainmask(out: Path, name: str, m: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    from anomaly.data.folder import _write

    d = Path(out) / "brainmasks"
    d.mkdir(parents=True, exist_ok=True)
    _write(d, name, np.asarray(m) > 0, spacing, None, is_mask=True)
