"""Synthetic T1 pathology inserted into real healthy anatomy (pure numpy/scipy, no I/O).

There is no public lesion data set in this project, so the benchmark paints lesions onto
healthy T1 volumes. ``add_lesion`` returns the new volume, the lesion mask and a
``LesionInfo``. Volumes follow the project's convention (``anomaly.scan``): (S, H, W),
axial slices inferior -> superior; a 2D (H, W) image is treated as one slice.

Kinds (all intensities are set relative to *local* tissue statistics: the median WM, GM
and CSF intensity within a few cm of the lesion, so a bias field or a different scanner
scale does not matter):

``tumour`` (native T1)
    Irregular blob (smooth union of a few offset ellipsoids, boundary perturbed by smooth
    random waves). Core hypointense (between CSF and GM), a 1-4 mm margin iso- to mildly
    hypointense (around GM), mild texture. Around it vasogenic oedema: WM darkened towards
    GM, spreading along white matter (geodesic distance with a cost that is low in WM and
    high in GM/CSF, so the cortex is relatively spared). Mass effect: a smooth radial
    displacement field (zero at the brain's edge, decaying like an expanding sphere's,
    tapered to zero at ~3.5 core radii) warps the anatomy before the lesion is drawn.
    The mask is the whole abnormal region (solid tumour + oedema) and ``size_mm`` is its
    largest diameter; the solid tumour is 50-85 % of it (``details["core_size_mm"]``).
``tumour_enhancing`` (labelled "T1 contrast-enhanced")
    As ``tumour`` but the solid part is an irregular, nodular enhancing rim (brighter than
    WM) around a dark necrotic core; small ones (< ~6 mm core) enhance solidly.
``wm_lesions``
    3-12 ovoid T1-hypointense white-matter lesions ("black holes"; GM-like to darker), the
    long axis perpendicular to the nearest ventricle wall when close to it (Dawson's
    fingers), centres drawn where WM probability > 0.5 with a periventricular bias, each
    confined to white matter. ``size_mm`` is the largest lesion; others are 3-10 mm.
``stroke``
    Chronic infarct: a wedge (cone whose apex lies deep and whose base is the cortex,
    clipped by the brain) covering grey and white matter, CSF-like (encephalomalacia)
    with a slightly brighter gliotic margin and a blurred edge.
``haemorrhage``
    Subacute haematoma: bright on T1 (methaemoglobin; brighter than WM, brightest at the
    periphery), roughly round with an irregular edge, for larger ones sometimes a thin dark
    (haemosiderin) rim, slight mass effect.

Texture: the image's own noise is measured near the lesion (robust std and lag-1
correlation of the high-pass residual in homogeneous tissue) and noise with that std and
correlation is added wherever the lesion replaces tissue; edges are blended with a smooth
alpha that keeps the total noise variance constant. All geometry is in mm (``spacing``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

LESION_KINDS = ("tumour", "tumour_enhancing", "wm_lesions", "stroke", "haemorrhage")
CONTRAST_NATIVE = "T1 native"
CONTRAST_ENHANCED = "T1 contrast-enhanced"
SUPPORTED_SIZE_MM = (3.0, 40.0)
_ACCEPTED_SIZE_MM = (1.0, 80.0)


@dataclass
class LesionInfo:
    """What was inserted. ``size_mm`` is the measured largest diameter of the mask (for
    ``wm_lesions``: of its largest component); ``centre`` is a voxel index (s, h, w) inside
    the lesion ((0, h, w) for a 2D image); ``details`` holds JSON-friendly scalars."""

    kind: str
    size_mm: float
    centre: tuple[int, int, int]
    n_components: int
    contrast: str  # "T1 native" or "T1 contrast-enhanced"
    details: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- small helpers


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ramp(d, width):
    """0 -> 1 smoothly as ``d`` goes from -width/2 to +width/2."""
    return _smoothstep(np.asarray(d) / max(width, 1e-6) + 0.5)


def _rand_dir(rng, flat, n=None):
    k = 1 if n is None else n
    d = rng.standard_normal((k, 3))
    if flat:
        d[:, 0] = 0.0
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    return d[0] if n is None else d


def _rand_rot(rng, flat):
    if flat:
        a = rng.uniform(0, 2 * np.pi)
        c, s = math.cos(a), math.sin(a)
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _rot_with_axis(u, rng, flat):
    """Rotation whose first column is ``u`` (long axis), the rest random around it."""
    u = np.asarray(u, float)
    u = u / max(np.linalg.norm(u), 1e-9)
    if flat:
        v = np.array([0.0, -u[2], u[1]])
        return np.stack([u, v, np.array([1.0, 0, 0])], axis=1)
    a = rng.standard_normal(3)
    a -= a.dot(u) * u
    if np.linalg.norm(a) < 1e-6:
        a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
        a -= a.dot(u) * u
    a /= np.linalg.norm(a)
    return np.stack([u, a, np.cross(u, a)], axis=1)


@lru_cache(maxsize=4)
def _directions(flat: bool) -> np.ndarray:
    if flat:
        t = np.linspace(0, np.pi, 72, endpoint=False)
        return np.stack([np.zeros_like(t), np.cos(t), np.sin(t)], axis=1)
    n = 160  # Fibonacci points on the upper hemisphere
    i = np.arange(n) + 0.5
    z = i / n
    phi = i * np.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z * z)
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)], axis=1)


def feret_diameter(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Largest diameter (mm) of a 2D/3D mask: max over directions of the projected extent
    of the voxels (each voxel counted as a box of ``spacing``)."""
    m = np.asarray(mask, bool)
    if m.ndim == 2:
        m = m[None]
        spacing = (1.0,) + tuple(spacing)[-2:]
    if not m.any():
        return 0.0
    sp = np.asarray(spacing, float)
    flat = m.shape[0] == 1
    if flat:
        b = m[0] & ~ndi.binary_erosion(m[0])
        pts = np.argwhere(b)
        pts = np.concatenate([np.zeros((len(pts), 1)), pts], axis=1) * sp
    else:
        b = m & ~ndi.binary_erosion(m)
        pts = np.argwhere(b) * sp
    dirs = _directions(flat)
    proj = pts @ dirs.T
    ext = proj.max(0) - proj.min(0) + np.abs(dirs) @ sp
    return float(ext.max())


def _sdf(mask, sp, flat):
    """Signed distance in mm to the mask surface (negative inside), lightly smoothed."""
    if not mask.any():
        return np.full(mask.shape, 1e3, np.float32)
    if mask.all():
        return np.full(mask.shape, -1e3, np.float32)
    half = 0.5 * float(min(sp[1:] if flat else sp))
    if flat:
        out = ndi.distance_transform_edt(~mask[0], sampling=sp[1:])[None]
        inn = ndi.distance_transform_edt(mask[0], sampling=sp[1:])[None]
    else:
        out = ndi.distance_transform_edt(~mask, sampling=sp)
        inn = ndi.distance_transform_edt(mask, sampling=sp)
    d = np.where(mask, -(inn - half), out - half).astype(np.float32)
    ds = ndi.gaussian_filter(d, _sig(0.5, np.ones(3), flat))
    # smoothing must not flip the side of a voxel (tiny lesions would vanish)
    return np.where(mask, np.minimum(ds, -0.7 * half), np.maximum(ds, 0.7 * half)).astype(np.float32)


def _sig(sigma, sp, flat):
    """Per-axis gaussian sigma in voxels for ``sigma`` mm (0 along the slice axis of a 2D image)."""
    s = [float(sigma) / float(x) for x in sp]
    if flat:
        s[0] = 0.0
    return s


def _keep_connected_to(mask, seed, flat):
    """Components of ``mask`` (full connectivity) that touch ``seed``."""
    st = np.ones((3, 3, 3), bool)
    if flat:
        st[0] = st[2] = False
    lab, n = ndi.label(mask, structure=st)
    if n <= 1:
        return mask
    ids = np.unique(lab[seed & mask])
    ids = ids[ids > 0]
    if len(ids) == 0:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        ids = [int(np.argmax(sizes)) + 1]
    return np.isin(lab, ids)


def _open_small(mask, size_mm, sp, flat):
    """Remove thread-like protrusions (a morphological opening) from lesions that are
    large compared with the voxels."""
    if size_mm < 6.0 * float(np.min(sp[1:] if flat else sp)):
        return mask
    st = ndi.generate_binary_structure(3, 1)
    if flat:
        st[0] = st[2] = False
    return ndi.binary_opening(mask, structure=st)


def _n_components(mask):
    flat = mask.shape[0] == 1
    st = np.ones((3, 3, 3), bool)
    if flat:
        st[0] = st[2] = False
    return int(ndi.label(mask, structure=st)[1])


def _lowfreq(rng, shape, sp, corr_mm, flat):
    """Smooth random field with ~corr_mm correlation length, unit std."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = ndi.gaussian_filter(n, _sig(corr_mm, sp, flat), mode="reflect")
    s = float(n.std())
    return n / s if s > 0 else n


# ----------------------------------------------------------------------------- shapes


class _Blob:
    """Implicit irregular blob in normalised units: F > 0 inside.

    F = 1 - softmin_i |ellipsoid_i distance| + irregular * smooth_waves.
    """

    def __init__(self, centres, axes, rots, irregular, rng, flat, waves=8, wavelength=1.1):
        self.c = np.asarray(centres, float)
        self.a = np.asarray(axes, float)
        self.r = [np.asarray(r, float) for r in rots]
        self.irregular = float(irregular)
        mags = (2 * np.pi / wavelength) * rng.uniform(0.7, 1.4, (waves, 1))
        self.k = _rand_dir(rng, flat, n=waves) * mags
        self.phi = rng.uniform(0, 2 * np.pi, waves)

    @classmethod
    def random(cls, rng, flat, n_parts, irregular, wavelength=1.1, offset=(0.3, 0.6), sec_axes=(0.45, 0.8)):
        cen, ax, rots = [], [], []
        for i in range(n_parts):
            if i == 0:
                cen.append(np.zeros(3))
                ax.append(rng.uniform(0.75, 1.0, 3))
            else:
                cen.append(_rand_dir(rng, flat) * rng.uniform(*offset))
                ax.append(rng.uniform(*sec_axes, 3))
            rots.append(_rand_rot(rng, flat))
        return cls(cen, ax, rots, irregular, rng, flat, wavelength=wavelength)

    def waves(self, z, y, x):
        n = 0.0
        for kk, ph in zip(self.k, self.phi):
            n = n + np.cos(kk[0] * z + kk[1] * y + kk[2] * x + ph)
        return np.clip(n * math.sqrt(2.0 / len(self.phi)), -2.0, 2.0)

    def F(self, z, y, x, wave_scale=1.0):
        vals = []
        for o, a, R in zip(self.c, self.a, self.r):
            dz, dy, dx = z - o[0], y - o[1], x - o[2]
            q = 0.0
            for j in range(3):
                comp = (R[0, j] * dz + R[1, j] * dy + R[2, j] * dx) / a[j]
                q = q + comp * comp
            vals.append(np.sqrt(q))
        if len(vals) == 1:
            smin = vals[0]
        else:
            k = 6.0
            m = vals[0]
            for v in vals[1:]:
                m = np.minimum(m, v)
            acc = 0.0
            for v in vals:
                acc = acc + np.exp(-k * (v - m))
            smin = m - np.log(acc) / k
        if wave_scale == 0:
            return 1.0 - smin
        return 1.0 - smin + wave_scale * self.irregular * self.waves(z, y, x)

    def extent_units(self, flat):
        """(largest diameter, largest distance from the origin) in normalised units."""
        step = 0.05 if flat else 0.1
        t = np.arange(-2.3, 2.3 + 1e-9, step)
        z = np.zeros((1, 1, 1)) if flat else t[:, None, None]
        inside = self.F(z, t[None, :, None], t[None, None, :]) > 0
        if not inside.any():
            return 1.0, 1.0
        d = feret_diameter(inside, (step, step, step))
        pts = np.argwhere(inside).astype(float)
        pts[:, 1:] = pts[:, 1:] * step + t[0]
        pts[:, 0] = 0.0 if flat else pts[:, 0] * step + t[0]
        return d, float(np.sqrt((pts**2).sum(1)).max()) + step


# ----------------------------------------------------------------------------- tissue model


@dataclass
class _Tissue:
    csf: float
    gm: float
    wm: float

    @property
    def gw(self) -> float:  # WM - GM contrast
        return max(self.wm - self.gm, 1e-3)

    @property
    def cg(self) -> float:  # GM - CSF contrast
        return max(self.gm - self.csf, 1e-3)


def _kmeans3(x):
    c = np.percentile(x, [15, 50, 85]).astype(float)
    for _ in range(30):
        lab = np.argmin(np.abs(x[:, None] - c[None]), axis=1)
        new = np.array([x[lab == k].mean() if np.any(lab == k) else c[k] for k in range(3)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def _class_stats(v, wm, gm, fallback: _Tissue | None, min_count=30):
    """Median intensity of (nearly) pure WM, GM and CSF; per class fall back if too few."""
    out = []
    csf_sel = (wm + gm) < 0.12
    for sel_hi, sel_lo, fb in (
        (wm > 0.9, wm > 0.65, None if fallback is None else fallback.wm),
        (gm > 0.9, gm > 0.65, None if fallback is None else fallback.gm),
        (csf_sel, (wm + gm) < 0.3, None if fallback is None else fallback.csf),
    ):
        val = None
        for sel in (sel_hi, sel_lo):
            if int(sel.sum()) >= min_count:
                val = float(np.median(v[sel]))
                break
        out.append(fb if val is None else val)
    return out  # wm, gm, csf (None where unknown)


def _noise_stats(r, sel):
    x = r[sel]
    if x.size < 50:
        return 0.0, 0.0
    s = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    a = r[..., :-1][sel[..., :-1] & sel[..., 1:]]
    b = r[..., 1:][sel[..., :-1] & sel[..., 1:]]
    if a.size < 50 or a.std() == 0 or b.std() == 0:
        return s, 0.0
    return s, float(np.corrcoef(a, b)[0, 1])


_NOISE_SIGMAS = (0.0, 0.3, 0.45, 0.6, 0.75, 0.9, 1.1, 1.35)


@lru_cache(maxsize=4)
def _noise_table(flat: bool):
    """For smoothed white noise (unit std after smoothing): residual MAD-std and lag-1 corr."""
    g = np.random.default_rng(12345)
    shape = (1, 256, 256) if flat else (48, 48, 48)
    white = g.standard_normal(shape)
    rows = []
    for s in _NOISE_SIGMAS:
        sig = [0.0 if flat else s, s, s]
        n = ndi.gaussian_filter(white, sig, mode="wrap") if s > 0 else white
        factor = float(n.std())
        n = n / factor
        r = n - ndi.gaussian_filter(n, [0.0 if flat else 1.0, 1.0, 1.0], mode="wrap")
        sel = np.ones(shape, bool)
        sd, rho = _noise_stats(r, sel)
        rows.append((s, factor, sd, rho))
    return rows


class _Ctx:
    """The volume, its brain mask, tissue probabilities and cached global estimates."""

    def __init__(self, vol, brain, spacing, wm, gm, rng):
        self.v = vol
        self.brain = brain
        self.sp = np.asarray(spacing, float)
        self.flat = vol.shape[0] == 1
        self.rng = rng
        self._wm, self._gm = wm, gm
        # strided grid (~2 mm) for placement and global statistics
        st = [max(1, int(round(2.0 / s))) for s in self.sp]
        if self.flat:
            st[0] = 1
        self.st = tuple(st)
        self.sub_sl = tuple(slice(None, None, s) for s in st)
        vs = np.nan_to_num(vol[self.sub_sl])
        bs = brain[self.sub_sl]
        vals = vs[bs]
        if vals.size < 20:
            vals = np.nan_to_num(vol[brain])
        km = _kmeans3(vals.astype(float))
        self.tissue = _Tissue(csf=float(km[0]), gm=float(km[1]), wm=float(km[2]))
        if wm is not None and gm is not None:
            w, g, c = _class_stats(vs[bs], wm[self.sub_sl][bs], gm[self.sub_sl][bs], self.tissue, min_count=20)
            self.tissue = self._ordered(_Tissue(csf=c, gm=g, wm=w), vals)
        else:
            self.tissue = self._ordered(self.tissue, vals)
        self._dist_sub = None
        self._wm_sub = None
        self._tissue_sub = None
        self._noise = None

    @staticmethod
    def _ordered(t: _Tissue, vals) -> _Tissue:
        if t.csf < t.gm < t.wm and (t.wm - t.gm) > 1e-6:
            return t
        p = np.percentile(vals, [5, 45, 85]) if vals.size else np.array([0.0, 0.5, 1.0])
        c, g, w = float(p[0]), float(p[1]), float(p[2])
        if not (c < g < w):
            base = float(np.median(vals)) if vals.size else 1.0
            span = max(abs(base), 1.0) * 0.2
            c, g, w = base - 2 * span, base, base + span
        return _Tissue(csf=c, gm=g, wm=w)

    # -- probabilities ---------------------------------------------------------------------
    def _pv(self, v, b, which):
        """Partial-volume tissue fractions from intensity (used when no maps are given)."""
        t = self.tissue
        vs = ndi.gaussian_filter(v.astype(np.float32), _sig(0.7, np.ones(3), self.flat), mode="nearest")
        wmp = np.clip((vs - t.gm) / t.gw, 0, 1)
        gmp = np.where(vs <= t.gm, np.clip((vs - t.csf) / t.cg, 0, 1), 1 - wmp)
        return ((wmp if which == "wm" else gmp) * b).astype(np.float32)

    def wm_crop(self, sl, v=None, b=None):
        if self._wm is not None:
            return self._wm[sl].astype(np.float32)
        return self._pv(np.nan_to_num(self.v[sl]) if v is None else v, self.brain[sl] if b is None else b, "wm")

    def gm_crop(self, sl, v=None, b=None):
        if self._gm is not None:
            return self._gm[sl].astype(np.float32)
        return self._pv(np.nan_to_num(self.v[sl]) if v is None else v, self.brain[sl] if b is None else b, "gm")

    def wm_sub(self):
        if self._wm_sub is None:
            if self._wm is not None:
                self._wm_sub = self._wm[self.sub_sl].astype(np.float32)
            else:
                self._wm_sub = self._pv(np.nan_to_num(self.v[self.sub_sl]), self.brain[self.sub_sl], "wm")
        return self._wm_sub

    def off_midline_sub(self, radius_mm):
        """Weight on the strided grid that discourages a lesion of ``radius_mm`` from
        straddling the mid-sagittal plane (columns run patient right -> left; the plane is
        taken through the brain's centre of mass)."""
        b = self.brain[self.sub_sl]
        x_mid = float(ndi.center_of_mass(b.any(axis=(0, 1)))[0]) * self.sub_sp()[2]
        x = np.arange(b.shape[2]) * self.sub_sp()[2]
        w = 0.03 + _smoothstep((np.abs(x - x_mid) - 0.6 * radius_mm) / 10.0)
        return np.broadcast_to(w[None, None, :], b.shape)

    def sub_sp(self):
        return self.sp * np.asarray(self.st)

    def dist_sub(self):
        """Distance (mm) to the outside of the brain (volume faces count as outside)."""
        if self._dist_sub is None:
            b = self.brain[self.sub_sl]
            pad = [(0, 0) if (self.flat and ax == 0) else (1, 1) for ax in range(3)]
            bp = np.pad(b, pad)
            if self.flat:
                d = ndi.distance_transform_edt(bp[0], sampling=self.sub_sp()[1:])[None]
            else:
                d = ndi.distance_transform_edt(bp, sampling=self.sub_sp())
            self._dist_sub = d[tuple(slice(p[0], d.shape[i] - p[1]) for i, p in enumerate(pad))].astype(np.float32)
        return self._dist_sub

    # -- geometry --------------------------------------------------------------------------
    def box(self, c_mm, half_mm):
        half = np.broadcast_to(np.asarray(half_mm, float), (3,))
        sl = []
        for ax in range(3):
            n = self.v.shape[ax]
            if self.flat and ax == 0:
                sl.append(slice(0, 1))
                continue
            lo = int(math.floor((c_mm[ax] - half[ax]) / self.sp[ax]))
            hi = int(math.ceil((c_mm[ax] + half[ax]) / self.sp[ax])) + 1
            sl.append(slice(max(lo, 0), min(max(hi, 1), n)))
        return tuple(sl)

    def coords(self, sl, c_mm):
        z = (np.arange(sl[0].start, sl[0].stop) * self.sp[0] - c_mm[0])[:, None, None]
        y = (np.arange(sl[1].start, sl[1].stop) * self.sp[1] - c_mm[1])[None, :, None]
        x = (np.arange(sl[2].start, sl[2].stop) * self.sp[2] - c_mm[2])[None, None, :]
        if self.flat:
            z = np.zeros_like(z)
        return z, y, x

    def place(self, need_mm, weights=None, region=None, exclude=None):
        """A voxel index (full resolution) inside the brain where a ball of ``need_mm``
        fits, drawn with ``weights`` (strided grid). Falls back to the deepest places."""
        d = self.dist_sub()
        ok_region = self.brain[self.sub_sl] if region is None else (region & self.brain[self.sub_sl])
        if exclude is not None:
            ok_region = ok_region & ~exclude
        if not ok_region.any():
            return None
        dd = np.where(ok_region, d, -1.0)
        cand = dd >= need_mm
        if not cand.any():
            cand = dd >= 0.85 * dd.max()
        idx = np.argwhere(cand)
        w = np.ones(len(idx)) if weights is None else np.asarray(weights[cand], float) + 1e-6
        i = int(self.rng.choice(len(idx), p=w / w.sum()))
        return tuple(int(a) * s for a, s in zip(idx[i], self.st))

    # -- local statistics ------------------------------------------------------------------
    def local_tissue(self, c_idx, half_mm=25.0) -> _Tissue:
        c_mm = np.asarray(c_idx, float) * self.sp
        sl = self.box(c_mm, half_mm)
        v = np.nan_to_num(self.v[sl])
        b = self.brain[sl]
        w, g, c = _class_stats(v[b], self.wm_crop(sl, v, b)[b], self.gm_crop(sl, v, b)[b], self.tissue)
        # local CSF samples are mostly partial-volume sulcal CSF: keep the darker level
        t = _Tissue(csf=min(c, self.tissue.csf), gm=g, wm=w)
        if not (t.csf < t.gm < t.wm):
            return self.tissue
        return t

    def tissue_sub(self):
        """Smoothed tissue (WM+GM) fraction on the strided grid: low in ventricles/fissures."""
        if self._tissue_sub is None:
            if self._gm is not None:
                g = self._gm[self.sub_sl].astype(np.float32)
            else:
                g = self._pv(np.nan_to_num(self.v[self.sub_sl]), self.brain[self.sub_sl], "gm")
            t = np.clip(self.wm_sub() + g, 0, 1) * self.brain[self.sub_sl]
            self._tissue_sub = ndi.gaussian_filter(t, _sig(4.0, self.sub_sp(), self.flat), mode="nearest")
        return self._tissue_sub

    def _noise_in(self, sl, need=300):
        """Noise model from pure white matter inside the box ``sl``; None if too little."""
        v = np.nan_to_num(self.v[sl]).astype(np.float32)
        b = self.brain[sl]
        if b.sum() < need:
            return None
        er = ndi.binary_erosion(b[0], iterations=2)[None] if self.flat else ndi.binary_erosion(b, iterations=2)
        w = self.wm_crop(sl, v, b)
        pure = er & (ndi.minimum_filter(w, size=[1 if self.flat else 3, 3, 3]) > 0.95)
        if pure.sum() < need:
            return None
        s1 = [0.0 if self.flat else 1.0, 1.0, 1.0]
        r = v - ndi.gaussian_filter(v, s1, mode="nearest")
        if self.flat:
            gs = ndi.gaussian_gradient_magnitude(v[0], 1.0)[None]
        else:
            gs = ndi.gaussian_gradient_magnitude(v, 1.0)
        sel = pure & (gs <= np.percentile(gs[pure], 70))
        sd, rho = _noise_stats(r, sel)
        if sd <= 0:
            return 0.0, 0.0, 1.0
        s, factor, sd_sim, _ = min(_noise_table(self.flat), key=lambda row: abs(row[3] - rho))
        # the total spread of pure WM around its smooth trend bounds the noise from above
        big = [0.0 if self.flat else 4.0, 4.0, 4.0]
        x = (v - ndi.gaussian_filter(v, big, mode="nearest"))[sel]
        s_total = 1.4826 * float(np.median(np.abs(x - np.median(x))))
        return min(sd / max(sd_sim, 1e-6), max(s_total, sd)), s, factor

    def global_noise(self):
        """Noise model from pure WM in the central part of the brain (cached)."""
        if self._noise is None:
            nz = [np.nonzero(self.brain.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
            sl = []
            for ax in range(3):
                lo, hi = int(nz[ax][0]), int(nz[ax][-1]) + 1
                q = (hi - lo) // 4
                sl.append(slice(lo + q, hi - q) if hi - lo > 8 else slice(lo, hi))
            model = self._noise_in(tuple(sl)) or self._noise_in(tuple(slice(None) for _ in range(3)), need=30)
            self._noise = model if model is not None else (0.0, 0.0, 1.0)
        return self._noise

    def noise_model(self, c_idx, half_mm=25.0):
        """(std, smoothing sigma in voxels, normalisation factor) of the image noise near c.

        The high-pass residual (image minus a 1-voxel gaussian) of pure white matter near
        the lesion (else in the centre of the brain): its robust (MAD) std and lag-1
        correlation are matched against smoothed white noise to choose the std and the
        smoothness of the noise added inside lesions.
        """
        c_mm = np.asarray(c_idx, float) * self.sp
        local = self._noise_in(self.box(c_mm, half_mm))
        return local if local is not None else self.global_noise()

    def noise_field(self, shape, model):
        std, s, factor = model
        n = self.rng.standard_normal(shape).astype(np.float32)
        if std <= 0:
            return np.zeros(shape, np.float32)
        if s > 0:
            n = ndi.gaussian_filter(n, [0.0 if self.flat else s, s, s], mode="reflect") / factor
        return n * np.float32(std)


def _composite(base, target, alpha, noise):
    """Blend ``target`` into ``base`` with ``alpha``; noise keeps the total variance constant."""
    a = np.clip(alpha, 0.0, 1.0)
    return (1 - a) * base + a * target + noise * np.sqrt(np.clip(1 - (1 - a) ** 2, 0, 1))


def _alpha(sd, width):
    """Soft inside-ness from a signed distance: 1 inside, 0 outside, a smooth ramp about
    5 x ``width`` wide centred on the surface and exactly 0/1 beyond it."""
    return _ramp(-sd, 5.0 * width).astype(np.float32)


def _edge_width(ctx):
    """Edge softness (mm): partial volume of about one voxel."""
    sp = ctx.sp[1:] if ctx.flat else ctx.sp
    return 0.4 * float(np.min(sp))


def _calibrate(build, param, target, update, sp, iters=3, tol=0.08):
    """Adjust ``param`` until the mask ``build(param)`` has a largest diameter near
    ``target``; returns the closest (mask, param)."""
    best = None
    for i in range(iters + 1):
        m = build(param)
        d = feret_diameter(m, sp)
        err = abs(d / target - 1) if d > 0 else np.inf
        if best is None or err < best[0]:
            best = (err, m, param)
        if err < tol or i == iters or d <= 0:
            break
        param = update(param, d)
    return best[1], best[2]


# ----------------------------------------------------------------------------- mass effect


def _mass_effect(ctx, sl, c_mm, v, extra, r_core, amp_mm, brain_crop):
    """Warp ``v`` (and the float maps in ``extra``) with an outward radial displacement.

    Backward mapping: output(x) = input(x - u(x)), |u| = A * phi(r) * taper(r) * beta(x);
    phi = r/R inside the tumour, (R/r)^2 outside (expanding sphere), taper 1 -> 0 between
    2R and 3.5R, beta 0 -> 1 over the outer 15 mm of the brain (the skull does not move).
    """
    if amp_mm <= 0.05:
        return v, extra, np.zeros(v.shape, bool)
    z, y, x = ctx.coords(sl, c_mm)
    r = np.sqrt(z * z + y * y + x * x).astype(np.float32)
    R = max(r_core, 0.5)
    phi = np.where(r < R, r / R, (R / np.maximum(r, 1e-6)) ** 2)
    taper = 1 - _smoothstep((r - 2 * R) / (1.5 * R))
    if ctx.flat:
        db = ndi.distance_transform_edt(brain_crop[0], sampling=ctx.sp[1:])[None]
    else:
        db = ndi.distance_transform_edt(brain_crop, sampling=ctx.sp)
    beta = _smoothstep(db / 15.0)
    mag = (amp_mm * phi * taper * beta).astype(np.float32)
    moved = mag > 1e-3
    if not moved.any():
        return v, extra, moved
    rr = np.maximum(r, 1e-6)
    idx = np.nonzero(moved)
    pos = []
    for ax, comp in enumerate((z, y, x)):
        comp_full = np.broadcast_to(comp, v.shape)
        disp = (mag * comp_full / rr)[idx] / ctx.sp[ax]
        pos.append(idx[ax] - disp)
    if ctx.flat:
        pos[0] = np.zeros_like(pos[1])
    coords = np.stack(pos)
    out = v.copy()
    out[idx] = ndi.map_coordinates(v, coords, order=3, mode="nearest")
    new_extra = []
    for e in extra:
        e2 = e.copy()
        e2[idx] = ndi.map_coordinates(e, coords, order=1, mode="nearest")
        new_extra.append(e2)
    return out, new_extra, moved


# ----------------------------------------------------------------------------- kinds


def _centre_from(ctx, centre):
    if centre is None:
        return None
    c = tuple(int(round(float(a))) for a in centre)
    if len(c) == 2:
        c = (0,) + c
    if len(c) != 3 or any(not (0 <= a < n) for a, n in zip(c, ctx.v.shape)):
        raise ValueError(f"centre {centre} is outside the volume of shape {ctx.v.shape}")
    if not ctx.brain[c]:
        raise ValueError(f"centre {centre} is not inside the brain mask")
    return c


def _tumour(ctx: _Ctx, size, centre, enhancing):
    rng, flat, sp = ctx.rng, ctx.flat, ctx.sp
    lo = 0.5 + 0.3 * float(np.clip((12.0 - size) / 9.0, 0, 1))
    core_frac = rng.uniform(lo, min(lo + 0.25, 0.9))
    core_d = size * core_frac
    blob = _Blob.random(rng, flat, int(rng.integers(2, 5)), rng.uniform(0.08, 0.16), wavelength=rng.uniform(1.0, 1.6))
    d_units, rmax_units = blob.extent_units(flat)
    scale = core_d / d_units
    if centre is None:
        wsub = ctx.wm_sub()
        c_idx = ctx.place(0.5 * size + 1.0, weights=(0.3 + wsub) * ctx.tissue_sub() ** 4 * ctx.off_midline_sub(0.5 * size))
    else:
        c_idx = centre
    c_mm = np.asarray(c_idx, float) * sp
    tis = ctx.local_tissue(c_idx, max(25.0, 0.6 * size))
    noise_model = ctx.noise_model(c_idx)
    e_max = 0.65 * size
    half = max(3.5 * 0.5 * core_d + 3.0, rmax_units * scale * 1.3 + 1.2 * e_max + 3.0)
    sl = ctx.box(c_mm, half)
    V = np.nan_to_num(ctx.v[sl]).astype(np.float32)
    B = ctx.brain[sl]
    W = ctx.wm_crop(sl, V, B)
    z, y, x = ctx.coords(sl, c_mm)
    seed = np.zeros(B.shape, bool)
    seed[tuple(int(c) - s.start for c, s in zip(c_idx, sl))] = True

    def core_at(sc):
        m = _open_small(blob.F(z / sc, y / sc, x / sc) > 0, core_d, sp, flat) & B
        return _keep_connected_to(m | seed, seed, flat) & B

    core, scale = _calibrate(core_at, scale, core_d, lambda sc, d: sc * core_d / d, sp, iters=2, tol=0.1)
    nvox = int(core.sum())
    vox = float(np.prod(sp[1:] if flat else sp))
    r_core = math.sqrt(nvox * vox / math.pi) if flat else (3 * nvox * vox / (4 * math.pi)) ** (1 / 3)
    amp = float(np.clip(rng.uniform(0.18, 0.32) * r_core, 0.0, 5.0))
    Vw, (Ww,), _ = _mass_effect(ctx, sl, c_mm, V, [W], r_core, amp, B)

    # oedema: geodesic spread from the solid tumour, cheap along WM, costly in GM/CSF
    wm_s = ndi.gaussian_filter(Ww, _sig(1.5, sp, flat), mode="nearest")
    n_cost = _lowfreq(rng, V.shape, sp, 4.0, flat)
    cost = (1.0 / (0.22 + 0.78 * np.clip(wm_s, 0, 1))) * (1 + 0.3 * np.clip(n_cost, -1.5, 1.5))
    cost = np.where(B, cost, 1e6).astype(np.float64)
    factor = 1 if flat else int(np.clip(e_max // (4.0 * float(sp.min())), 1, 3))
    geo = _geodesic(cost, core, sp, flat, max_cost=1.05 * e_max + 2.0 + 2.0 * factor * float(sp.max()), factor=factor)
    e = max(0.5, 0.5 * (size - feret_diameter(core, sp)) * 1.1)

    def oedema_mask(ee):
        m = core | ((geo < ee) & B)
        return _keep_connected_to(m, core, flat)

    mask, e = _calibrate(
        oedema_mask, e, size, lambda ee, d: float(np.clip(ee + 0.5 * (size - d) * (1.2 if d < size else 1.0), 0.3, e_max)), sp, iters=4
    )
    o = np.clip(1 - geo / max(e, 1e-3), 0, 1) ** 0.4
    o = ndi.gaussian_filter(o.astype(np.float32), _sig(0.8, sp, flat), mode="nearest") * B

    k_o = rng.uniform(0.7, 1.05)
    shift = -k_o * tis.gw * o * (0.45 + 0.55 * np.clip(wm_s, 0, 1))
    base = Vw + shift

    sd = _sdf(core, sp, flat)
    tex = _lowfreq(rng, V.shape, sp, rng.uniform(2.0, 4.0), flat)
    details = {"core_size_mm": round(feret_diameter(core, sp), 2), "oedema_mm": round(e, 2), "mass_effect_mm": round(amp, 2)}
    # a smoother nested level set of the same blob gives the inner (cystic/necrotic) part
    n_in = _lowfreq(rng, V.shape, sp, max(2.0, 0.35 * r_core), flat)
    Fi = blob.F(z / scale, y / scale, x / scale, wave_scale=0.4) + 0.08 * np.clip(n_in, -2, 2)
    if not enhancing:
        level = rng.uniform(0.3, 0.5)  # margin ~30-50 % of the radius
        I_margin = tis.gm - rng.uniform(0.05, 0.25) * tis.cg
        I_core = tis.csf + rng.uniform(0.25, 0.5) * tis.cg
        t = _ramp(Fi - level, 0.3)
        target = I_margin + (I_core - I_margin) * t + 0.07 * tis.cg * tex
        details.update(core_intensity=round(float(I_core), 2), margin_intensity=round(float(I_margin), 2))
    else:
        rim_mm = rng.uniform(2.0, 4.5)
        level = float(np.clip(rim_mm / max(r_core, 1e-3), 0.15, 0.6))
        e_r = rng.uniform(0.6, 1.1)
        I_rim = tis.wm + e_r * tis.gw * np.clip(1 + 0.35 * n_in, 0.75, 1.6) + 0.06 * tis.gw * tex
        I_nec = tis.csf + rng.uniform(0.25, 0.5) * tis.cg + 0.08 * tis.cg * tex
        if r_core < 3.0:  # small: solid enhancing nodule
            t = np.zeros_like(Fi)
        else:
            t = _ramp(Fi + 0.1 * np.clip(n_in, -2, 2) - level, 0.12)
        target = I_rim + (I_nec - I_rim) * t
        details.update(rim_mm=round(rim_mm, 2), rim_intensity=round(float(tis.wm + e_r * tis.gw), 2))
    alpha = _alpha(sd, _edge_width(ctx)) * B
    noise = ctx.noise_field(V.shape, noise_model)
    new = _composite(base, target, alpha, noise)
    details.update(local_wm=round(tis.wm, 2), local_gm=round(tis.gm, 2), local_csf=round(tis.csf, 2), noise_std=round(noise_model[0], 3))
    return sl, new.astype(np.float32), mask & B, c_idx, details


def _geodesic(cost, start, sp, flat, max_cost, factor=1):
    """Cumulative cost (mm-weighted path length) from ``start``; inf where not reached.

    ``factor`` > 1 runs the search on a grid ``factor`` times coarser (3D only) and
    interpolates back: a large speed-up for big tumours at a small loss of detail.
    """
    if flat:
        c2, s2, sp2 = cost[0], start[0], np.asarray(sp[1:], float)
        factor = 1
    else:
        c2, s2, sp2 = cost, start, np.asarray(sp, float)
    f = int(factor)
    if f > 1:
        o = f // 2
        full_shape = c2.shape
        c2 = c2[o::f, o::f, o::f]
        s2 = ndi.maximum_filter(s2, size=f)[o::f, o::f, o::f]
        sp2 = sp2 * f
    try:
        from skimage.graph import MCP_Geometric

        er = ndi.binary_erosion(s2)
        starts = [tuple(int(i) for i in p) for p in np.argwhere(s2 & ~er)]
        mcp = MCP_Geometric(c2, sampling=tuple(sp2), fully_connected=True)
        try:  # stopping early is only a speed-up; the parameter is deprecated in scikit-image 0.26
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                cum, _ = mcp.find_costs(starts, max_cumulative_cost=float(max_cost))
        except TypeError:
            cum, _ = mcp.find_costs(starts)
        cum = np.where(np.isfinite(cum), cum, np.inf)
    except ImportError:  # pragma: no cover - scikit-image is a dependency; Euclidean fallback
        med = float(np.median(c2[c2 < 1e5])) if np.any(c2 < 1e5) else 1.0
        cum = ndi.distance_transform_edt(~s2, sampling=sp2) * med
    cum[s2] = 0.0
    if f > 1:
        big = 1e4
        c_fin = np.where(np.isfinite(cum), cum, big).astype(np.float32)
        grids = np.meshgrid(*[(np.arange(n) - o) / f for n in full_shape], indexing="ij", sparse=False)
        up = ndi.map_coordinates(c_fin, grids, order=1, mode="nearest")
        up[up > 0.5 * big] = np.inf
        up[start] = 0.0
        return up
    return cum[None] if flat else cum


def _haemorrhage(ctx: _Ctx, size, centre):
    rng, flat, sp = ctx.rng, ctx.flat, ctx.sp
    blob = _Blob.random(
        rng, flat, int(rng.integers(1, 3)), rng.uniform(0.06, 0.12), wavelength=rng.uniform(0.8, 1.2), offset=(0.15, 0.4), sec_axes=(0.65, 0.9)
    )
    d_units, rmax_units = blob.extent_units(flat)
    scale = size / d_units
    c_idx = centre if centre is not None else ctx.place(0.5 * size + 1.0, weights=ctx.tissue_sub() ** 4 * ctx.off_midline_sub(0.5 * size))
    c_mm = np.asarray(c_idx, float) * sp
    tis = ctx.local_tissue(c_idx, max(25.0, 0.6 * size))
    noise_model = ctx.noise_model(c_idx)
    half = max(rmax_units * scale * 1.4 + 3.0, 3.5 * 0.5 * size + 3.0)
    sl = ctx.box(c_mm, half)
    V = np.nan_to_num(ctx.v[sl]).astype(np.float32)
    B = ctx.brain[sl]
    z, y, x = ctx.coords(sl, c_mm)
    seed = np.zeros(B.shape, bool)
    seed[tuple(int(c) - s.start for c, s in zip(c_idx, sl))] = True

    def shape_at(sc):
        m = _open_small(blob.F(z / sc, y / sc, x / sc) > 0, size, sp, flat) & B
        return _keep_connected_to(m | seed, seed, flat) & B

    mask, scale = _calibrate(shape_at, scale, size, lambda sc, d: sc * size / d, sp, iters=3)
    nvox = int(mask.sum())
    vox = float(np.prod(sp[1:] if flat else sp))
    r_eq = math.sqrt(nvox * vox / math.pi) if flat else (3 * nvox * vox / (4 * math.pi)) ** (1 / 3)
    amp = float(np.clip(rng.uniform(0.05, 0.15) * r_eq, 0.0, 2.0))
    Vw, _, _ = _mass_effect(ctx, sl, c_mm, V, [], r_eq, amp, B)
    sd = _sdf(mask, sp, flat)
    depth = -sd
    dmax = max(float(depth[mask].max()) if mask.any() else 1.0, 1e-3)
    # methaemoglobin forms from the periphery inwards: periphery brightest
    e_c = rng.uniform(0.35, 0.75)
    e_p = e_c + rng.uniform(0.15, 0.5)
    tex = _lowfreq(rng, V.shape, sp, rng.uniform(1.5, 3.0), flat)
    radial = _smoothstep(depth / dmax)  # 0 at the edge, 1 in the middle
    target = tis.wm + tis.gw * (e_p + (e_c - e_p) * radial) + 0.2 * tis.gw * tex
    # a thin haemosiderin rim only where it is thin relative to the lesion and resolvable
    rim = bool(rng.uniform() < 0.5 and size >= 16 and float(np.min(sp[1:] if flat else sp)) <= 1.25)
    details = {"mass_effect_mm": round(amp, 2), "dark_rim": rim}
    if rim:  # thin, patchy haemosiderin rim, mildly hypointense
        rim_w = rng.uniform(0.7, 1.3) * (1 + 0.4 * np.clip(_lowfreq(rng, V.shape, sp, 3.0, flat), -1.5, 1.5))
        I_rim = tis.wm - rng.uniform(0.4, 1.0) * tis.gw
        target = I_rim + (target - I_rim) * _ramp(depth - rim_w, 1.0)
        details["rim_mm"] = round(float(np.median(rim_w)), 2)
    alpha = _alpha(sd, _edge_width(ctx)) * B
    noise = ctx.noise_field(V.shape, noise_model)
    new = _composite(Vw, target, alpha, noise)
    details.update(local_wm=round(tis.wm, 2), noise_std=round(noise_model[0], 3))
    return sl, new.astype(np.float32), mask, c_idx, details


def _stroke(ctx: _Ctx, size, centre):
    rng, flat, sp = ctx.rng, ctx.flat, ctx.sp
    # small territories are narrow and deep enough to reach the white matter
    t_lo, t_hi = (18.0, 26.0) if size < 20 else (20.0, 34.0)
    theta = math.radians(rng.uniform(t_lo, t_hi))
    L = size / max(1.2, 2.4 * math.tan(theta))
    b = ctx.brain
    # outward normals from a smoothed brain mask (strided grid is enough)
    bs = b[ctx.sub_sl].astype(np.float32)
    sm = ndi.gaussian_filter(bs, _sig(4.0, ctx.sub_sp(), flat), mode="nearest")
    grads = [np.zeros_like(sm) if (flat and ax == 0) or sm.shape[ax] < 2 else np.gradient(sm, axis=ax) / ctx.sub_sp()[ax] for ax in range(3)]
    dist = ctx.dist_sub()
    com = np.array(ndi.center_of_mass(bs)) * ctx.sub_sp()
    if flat:
        com[0] = 0.0

    def inward_at(p_sub):
        g = np.array([grads[ax][p_sub] for ax in range(3)])
        n = np.linalg.norm(g)
        return g / n if n > 1e-9 else None

    wsub = ctx.wm_sub()

    def wm_at_mm(p_mm):
        i = tuple(int(np.clip(round(p_mm[ax] / ctx.sub_sp()[ax]), 0, wsub.shape[ax] - 1)) for ax in range(3))
        return float(wsub[i])

    def dist_at_mm(p_mm):
        i = tuple(int(np.clip(round(p_mm[ax] / ctx.sub_sp()[ax]), 0, dist.shape[ax] - 1)) for ax in range(3))
        return float(dist[i])

    if centre is not None:
        c_mm0 = np.asarray(centre, float) * sp
        u = c_mm0 - com
        if flat:
            u[0] = 0
        if np.linalg.norm(u) < 1e-6:
            u = _rand_dir(rng, flat)
        u = u / np.linalg.norm(u)
        q = c_mm0.copy()
        for _ in range(2000):  # march outwards to the brain surface
            nxt = q + 0.5 * u
            i = tuple(int(round(nxt[ax] / sp[ax])) for ax in range(3))
            if any(not (0 <= i[ax] < b.shape[ax]) for ax in range(3)) or not b[i]:
                break
            q = nxt
        q_mm = q
    else:
        # candidate surface points: brain voxels (strided) within ~3 mm of the outside,
        # not on the volume's faces, whose apex (L mm inward) is inside the brain.
        surf = (dist > 0) & (dist <= 3.0 * max(1.0, float(ctx.sub_sp()[1:].mean()) / 2))
        for ax in range(3):
            if flat and ax == 0:
                continue
            face = [slice(None)] * 3
            face[ax] = slice(0, 2)
            surf[tuple(face)] = False
            face[ax] = slice(-2, None)
            surf[tuple(face)] = False
        cand = np.argwhere(surf)
        if len(cand) == 0:
            cand = np.argwhere(dist > 0)
        # prefer the cerebral convexity: a lateral entry (outward normal not pointing
        # up or down) above the lowest ~35 % of the brain (cerebellum, skull base)
        zs = np.nonzero(bs.any(axis=(1, 2)))[0]
        z_lo, z_hi = (float(zs[0]), float(zs[-1])) if len(zs) else (0.0, 1.0)
        order = rng.permutation(len(cand))[:400]
        scored = []
        for j in order:
            p = tuple(cand[j])
            n_in = inward_at(p)
            if n_in is None:
                continue
            p_mm = np.asarray(p, float) * ctx.sub_sp()
            fit = min(dist_at_mm(p_mm + n_in * L), 0.35 * L) + (0.35 * L if dist_at_mm(p_mm + n_in * 0.5 * L) > 0 else 0)
            # a territory spans cortex and the white matter beneath it
            fit *= 0.2 + 0.8 * max(wm_at_mm(p_mm + n_in * f * L) for f in (0.4, 0.6, 0.8))
            pref = float(_smoothstep(abs(p_mm[2] - com[2]) / 20.0))
            if not flat and z_hi > z_lo:
                zf = (p[0] - z_lo) / (z_hi - z_lo)
                pref *= (1.0 - 0.8 * abs(float(n_in[0]))) * (1.0 if zf > 0.35 else 0.25)
            scored.append((fit / (0.7 * L) * pref, p_mm, -n_in))
        if not scored:
            raise ValueError("cannot place a stroke: no usable brain surface")
        top = max(sc[0] for sc in scored)
        good = [sc for sc in scored if sc[0] >= 0.8 * top]
        _, q_mm, u = good[int(rng.integers(len(good)))]
    x_mid = float(com[2])
    side = float(np.sign(q_mm[2] - x_mid)) if abs(q_mm[2] - x_mid) > 3.0 else None
    seed_val = int(rng.integers(2**32))
    best = None
    for it in range(5):
        apex = q_mm - u * L
        mid = q_mm - u * 0.5 * L
        sl = ctx.box(mid, 1.25 * L + 4.0)
        z, y, x = ctx.coords(sl, apex)
        along = z * u[0] + y * u[1] + x * u[2]
        pz, py, px = z - along * u[0], y - along * u[1], x - along * u[2]
        perp = np.sqrt(pz * pz + py * py + px * px)
        B = b[sl]
        # the same draws at every iteration keep the result deterministic
        g_local = np.random.default_rng(seed_val)
        n_ang = _lowfreq(g_local, B.shape, sp, max(2.0, 0.25 * L), flat)
        n_edge = _lowfreq(g_local, B.shape, sp, 2.0, flat)
        th = np.clip(theta * (1 + 0.28 * np.clip(n_ang, -1.8, 1.8)), 0.05, 1.3)
        wobble = 0.9 * np.clip(n_edge, -2, 2) * min(1.0, L / 20.0)
        inside = (perp < along * np.tan(th) + wobble) & (along > 0) & (along < 1.2 * L * (1 + 0.06 * n_ang)) & B
        if side is not None:  # arterial territories are unilateral: stay off the midline
            xw = np.broadcast_to(x + apex[2] - x_mid, B.shape)
            inside &= (xw * side) > 1.0
        seed = inside & (along > 0.25 * L) & (along < 0.75 * L)
        mask = _keep_connected_to(inside, seed, flat) if inside.any() else inside
        d = feret_diameter(mask, sp)
        err = abs(d / size - 1) if d > 0 else np.inf
        if best is None or err < best[0]:
            best = (err, mask, sl, L)
        if d <= 0 or err < 0.08:
            break
        L = L * float(np.clip(size / d, 0.6, 1.6))
    _, mask, sl, L = best
    B = b[sl]
    if not mask.any():
        raise ValueError("cannot place a stroke here: the wedge misses the brain")
    pts = np.argwhere(mask)
    cen_local = pts.mean(0)
    k = int(np.argmin(((pts - cen_local) ** 2 * sp**2).sum(1)))
    c_idx = tuple(int(pts[k][ax] + sl[ax].start) for ax in range(3))
    tis = ctx.local_tissue(c_idx, max(25.0, 0.6 * size))
    noise_model = ctx.noise_model(c_idx)
    V = np.nan_to_num(ctx.v[sl]).astype(np.float32)
    sd = _sdf(mask, sp, flat)
    depth = -sd
    I_core = tis.csf + rng.uniform(0.05, 0.28) * tis.cg
    I_glio = tis.csf + rng.uniform(0.45, 0.7) * tis.cg
    g_w = rng.uniform(1.5, 3.0)
    tex = _lowfreq(rng, V.shape, sp, rng.uniform(1.5, 3.0), flat)
    target = I_core + (I_glio - I_core) * (1 - _smoothstep(depth / g_w)) + 0.08 * tis.cg * tex
    alpha = _alpha(sd, max(1.0, _edge_width(ctx) * 2)) * B
    noise = ctx.noise_field(V.shape, noise_model)
    new = _composite(V, target, alpha, noise)
    details = {"wedge_half_angle_deg": round(math.degrees(theta), 1), "wedge_length_mm": round(L, 2), "local_gm": round(tis.gm, 2), "noise_std": round(noise_model[0], 3)}
    return sl, new.astype(np.float32), mask, c_idx, details


def _wm_lesions(ctx: _Ctx, size, centre):
    rng, flat, sp = ctx.rng, ctx.flat, ctx.sp
    n = int(rng.integers(3, 13))
    sizes = [size] + [float(rng.uniform(3.0, max(3.0, min(10.0, size)))) for _ in range(n - 1)]
    ssp = ctx.sub_sp()
    wsub = ctx.wm_sub()
    bsub = ctx.brain[ctx.sub_sl]
    wm_region = (wsub > 0.5) & bsub
    if not wm_region.any():
        wm_region = (wsub >= 0.8 * float(wsub[bsub].max() if bsub.any() else 0)) & bsub
    # ventricles: deep CSF-like tissue
    t = ctx.tissue
    vs = ndi.gaussian_filter(np.nan_to_num(ctx.v[ctx.sub_sl]).astype(np.float32), _sig(1.0, ssp, flat), mode="nearest")
    vent = bsub & (vs < 0.5 * (t.csf + t.gm)) & (ctx.dist_sub() > 10.0) & (wsub < 0.2)
    if vent.sum() >= 4:
        if flat:
            dvent = ndi.distance_transform_edt(~vent[0], sampling=ssp[1:])[None]
        else:
            dvent = ndi.distance_transform_edt(~vent, sampling=ssp)
    else:
        dvent = np.full(bsub.shape, 30.0)
    gv = [np.zeros_like(dvent) if (flat and ax == 0) or dvent.shape[ax] < 2 else np.gradient(dvent, axis=ax) for ax in range(3)]
    weights = np.exp(-dvent / 6.0) + 0.03
    taken = np.zeros(bsub.shape, bool)
    grid = np.stack(np.meshgrid(*[np.arange(s) * ssp[ax] for ax, s in enumerate(bsub.shape)], indexing="ij"), 0) if not flat else None
    out = np.nan_to_num(ctx.v).astype(np.float32, copy=True)
    mask_full = np.zeros(ctx.v.shape, bool)
    comps = []
    for i, d_i in enumerate(sizes):
        ratio = rng.uniform(1.3, 2.0)
        a = 0.5 * d_i
        bax = a / ratio
        cax = bax * rng.uniform(0.8, 1.0)
        if i == 0 and centre is not None:
            c_idx = centre
        else:
            c_idx = ctx.place(min(0.8 * bax + 0.5, 6.0), weights=weights, region=wm_region, exclude=taken)
        if c_idx is None:
            break
        c_sub = tuple(min(int(c // s), dim - 1) for c, s, dim in zip(c_idx, ctx.st, bsub.shape))
        # keep further lesions apart from this one
        rad = a + 3.0 + 5.0
        c_mm = np.asarray(c_idx, float) * sp
        if flat:
            yy = (np.arange(bsub.shape[1]) * ssp[1] - c_mm[1])[:, None]
            xx = (np.arange(bsub.shape[2]) * ssp[2] - c_mm[2])[None, :]
            taken |= ((yy**2 + xx**2) < rad**2)[None]
        else:
            dd = ((grid - c_mm[:, None, None, None]) ** 2).sum(0)
            taken |= dd < rad**2
        # orientation: perpendicular to the nearest ventricle wall when close to it
        g = np.array([gv[ax][c_sub] for ax in range(3)])
        if dvent[c_sub] < 15.0 and np.linalg.norm(g) > 1e-6:
            u = g / np.linalg.norm(g) + 0.25 * _rand_dir(rng, flat)
            if flat:
                u[0] = 0
        else:
            u = _rand_dir(rng, flat)
        R = _rot_with_axis(u, rng, flat)
        blob = _Blob([np.zeros(3)], [[1.0, bax / a, cax / a]], [R], rng.uniform(0.04, 0.08), rng, flat, wavelength=1.2)
        d_units, rmax_units = blob.extent_units(flat)
        scale = d_i / d_units
        sl = ctx.box(c_mm, rmax_units * scale * 1.5 + 3.0)
        B = ctx.brain[sl]
        V = out[sl]
        Wc = ctx.wm_crop(sl, np.nan_to_num(ctx.v[sl]), B)
        wm_ok = ndi.gaussian_filter(Wc, _sig(1.0, sp, flat), mode="nearest") > 0.3
        z, y, x = ctx.coords(sl, c_mm)
        seed = np.zeros(B.shape, bool)
        seed[tuple(int(c) - s.start for c, s in zip(c_idx, sl))] = True

        def shape_at(sc):
            m = (blob.F(z / sc, y / sc, x / sc) > 0) & B & (wm_ok | seed)
            return _keep_connected_to(m | seed, seed, flat) & B

        m, scale = _calibrate(shape_at, scale, d_i, lambda sc, d: sc * float(np.clip(d_i / d, 0.7, 1.5)), sp, iters=5, tol=0.1)
        m &= ~ndi.binary_dilation(mask_full[sl], iterations=1)  # keep components apart
        if not m.any():
            continue
        tis = ctx.local_tissue(c_idx, 20.0)
        nm = ctx.noise_model(c_idx, 15.0)
        sd = _sdf(m, sp, flat)
        k_i = rng.uniform(0.7, 1.7)
        I = max(tis.wm - k_i * tis.gw, tis.csf + 0.25 * tis.cg)
        depth = -sd
        tex = _lowfreq(rng, V.shape, sp, 1.5, flat)
        target = tis.wm + (I - tis.wm) * (0.8 + 0.2 * _smoothstep(depth / max(0.5 * bax, 0.5))) + 0.05 * tis.cg * tex
        alpha = _alpha(sd, _edge_width(ctx)) * B
        noise = ctx.noise_field(V.shape, nm)
        out[sl] = _composite(V, target, alpha, noise)
        mask_full[sl] |= m
        comps.append({"size_mm": round(feret_diameter(m, sp), 2), "centre": [int(c) for c in c_idx], "intensity": round(float(I), 2)})
    if not mask_full.any():
        raise ValueError("cannot place white-matter lesions: no white matter found")
    largest = max(range(len(comps)), key=lambda j: comps[j]["size_mm"])
    details = {"lesions": comps, "largest_size_mm": comps[largest]["size_mm"]}
    return out, mask_full, tuple(comps[largest]["centre"]) if centre is None else centre, details


# ----------------------------------------------------------------------------- public API


def add_lesion(
    volume: np.ndarray,
    brain_mask: np.ndarray,
    kind: str,
    size_mm: float,
    rng: np.random.Generator,
    spacing=(1.0, 1.0, 1.0),
    wm_prob: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    centre: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, LesionInfo]:
    """Insert one synthetic lesion of ``kind`` into a T1 volume (S, H, W) or image (H, W).

    ``size_mm`` is the largest diameter of the lesion mask (supported 3..40 mm; for
    ``wm_lesions`` the largest of the lesions). ``wm_prob``/``gm_prob`` are tissue
    probabilities in [0, 1] (0..255 maps are rescaled); without them tissue fractions are
    estimated from intensity (WM = brightest class in the brain, GM intermediate).
    ``centre`` (voxel index) fixes the lesion's position; otherwise a place where it fits
    is drawn with ``rng``. Returns (new volume float32, lesion mask bool, info); the input
    is never modified and the mask lies inside ``brain_mask``. Deterministic given ``rng``.
    """
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
    size = float(size_mm)
    if not math.isfinite(size) or not (_ACCEPTED_SIZE_MM[0] <= size <= _ACCEPTED_SIZE_MM[1]):
        raise ValueError(f"size_mm must be within {SUPPORTED_SIZE_MM[0]:g}..{SUPPORTED_SIZE_MM[1]:g} mm, got {size_mm}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")
    vol = np.asarray(volume)
    two_d = vol.ndim == 2
    if vol.ndim not in (2, 3):
        raise ValueError(f"volume must be 2D (H, W) or 3D (S, H, W), got shape {vol.shape}")
    brain = np.asarray(brain_mask).astype(bool)
    if brain.shape != vol.shape:
        raise ValueError(f"brain_mask shape {brain.shape} differs from volume shape {vol.shape}")
    sp = tuple(float(s) for s in np.atleast_1d(spacing))
    if two_d and len(sp) == 2:
        sp = (1.0,) + sp
    if len(sp) != 3 or any(not (s > 0 and math.isfinite(s)) for s in sp):
        raise ValueError(f"spacing must be three positive numbers (ds, dh, dw), got {spacing}")
    v3 = vol[None] if two_d else vol
    b3 = brain[None] if two_d else brain
    if not b3.any():
        raise ValueError("brain_mask is empty")

    def prob(p, name):
        if p is None:
            return None
        a = np.asarray(p, dtype=np.float32)
        if a.shape != vol.shape:
            raise ValueError(f"{name} shape {a.shape} differs from volume shape {vol.shape}")
        a = np.nan_to_num(a)
        if a.max() > 1.5:  # 0..255 maps
            a = a / 255.0
        a = np.clip(a, 0.0, 1.0)
        return a[None] if two_d else a

    wm = prob(wm_prob, "wm_prob")
    gm = prob(gm_prob, "gm_prob")
    ctx = _Ctx(np.asarray(v3, dtype=np.float32), b3, sp, wm, gm, rng)
    c = _centre_from(ctx, centre)

    out = np.array(v3, dtype=np.float32, copy=True)
    if kind in ("tumour", "tumour_enhancing"):
        sl, new, m, c_idx, details = _tumour(ctx, size, c, enhancing=kind == "tumour_enhancing")
        mask = np.zeros(v3.shape, bool)
        out[sl] = new
        mask[sl] = m
    elif kind == "haemorrhage":
        sl, new, m, c_idx, details = _haemorrhage(ctx, size, c)
        mask = np.zeros(v3.shape, bool)
        out[sl] = new
        mask[sl] = m
    elif kind == "stroke":
        sl, new, m, c_idx, details = _stroke(ctx, size, c)
        mask = np.zeros(v3.shape, bool)
        out[sl] = new
        mask[sl] = m
    else:
        new_full, mask, c_idx, details = _wm_lesions(ctx, size, c)
        out = new_full
    # voxels outside the brain and non-finite inputs are left exactly as they were
    keep = ~b3 | ~np.isfinite(np.asarray(v3, dtype=np.float32))
    if keep.any():
        out[keep] = np.asarray(v3, dtype=np.float32)[keep]
    mask &= b3
    if not mask.any():
        raise ValueError(f"could not place a {kind} lesion of {size:g} mm in this brain mask")
    if kind == "wm_lesions":
        measured = float(details["largest_size_mm"])
    else:
        measured = feret_diameter(mask, sp)
    details["requested_size_mm"] = size
    info = LesionInfo(
        kind=kind,
        size_mm=round(measured, 2),
        centre=tuple(int(a) for a in c_idx),
        n_components=_n_components(mask),
        contrast=CONTRAST_ENHANCED if kind == "tumour_enhancing" else CONTRAST_NATIVE,
        details=details,
    )
    if two_d:
        return out[0], mask[0], info
    return out, mask, info


# ----------------------------------------------------------------------------- gallery


GALLERY_SEEDS = {"tumour": 3, "tumour_enhancing": 4, "wm_lesions": 13, "stroke": 6, "haemorrhage": 7}


def render_lesion_gallery(out_path, template=None, seeds: dict | None = None, sizes: dict | None = None) -> list[LesionInfo]:
    """PNG montage: one axial slice through each kind on MNI152 (before / after / mask / zoom).

    Reads the project's templates (the only I/O in this module); returns the infos.
    ``seeds``: rng seed per kind (the defaults show typical, well-placed examples).
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly.data.folder import read_image

    root = Path(__file__).resolve().parents[2] / "assets" / "templates"
    t1 = read_image(Path(template) if template else root / "mni152_2009a_t1_1mm.nii.gz")
    wm = read_image(root / "mni152_2009a_wm_1mm.nii.gz") / 255.0 if template is None else None
    gm = read_image(root / "mni152_2009a_gm_1mm.nii.gz") / 255.0 if template is None else None
    brain = t1 > 0
    sizes = sizes or {"tumour": 32.0, "tumour_enhancing": 34.0, "wm_lesions": 12.0, "stroke": 38.0, "haemorrhage": 22.0}
    kinds = list(LESION_KINDS)
    fig, axes = plt.subplots(len(kinds), 4, figsize=(13, 3.4 * len(kinds)), dpi=110)
    infos = []
    for row, kind in enumerate(kinds):
        rng = np.random.default_rng((seeds or GALLERY_SEEDS).get(kind, row))
        new, mask, info = add_lesion(t1, brain, kind, sizes[kind], rng, wm_prob=wm, gm_prob=gm)
        infos.append(info)
        # the axial slice with the most lesion (for several lesions: through the largest)
        s = info.centre[0] if info.n_components > 1 else int(np.argmax(mask.sum(axis=(1, 2))))
        before, after, m = t1[s], new[s], mask[s]
        vmin, vmax = 0.0, float(np.percentile(t1[brain], 99.5)) * 1.35
        axes[row, 0].imshow(before, cmap="gray", vmin=vmin, vmax=vmax)
        axes[row, 1].imshow(after, cmap="gray", vmin=vmin, vmax=vmax)
        axes[row, 2].imshow(after, cmap="gray", vmin=vmin, vmax=vmax)
        axes[row, 2].contour(m, levels=[0.5], colors="r", linewidths=0.8)
        h, w = (int(a) for a in info.centre[1:]) if info.n_components > 1 else (int(round(a)) for a in ndi.center_of_mass(m))
        r = int(max(25, info.size_mm * 1.0))
        h0, h1 = max(0, h - r), min(after.shape[0], h + r)
        w0, w1 = max(0, w - r), min(after.shape[1], w + r)
        axes[row, 3].imshow(after[h0:h1, w0:w1], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        axes[row, 0].set_ylabel(f"{kind}\n{info.size_mm:.0f} mm, {info.n_components} comp.\n{info.contrast}")
        for j, title in enumerate(("before", "after", "mask", "zoom (after)")):
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
            if row == 0:
                axes[row, j].set_title(title)
    fig.suptitle("Synthetic T1 lesions on MNI152 (axial, patient right on the left)")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return infos
