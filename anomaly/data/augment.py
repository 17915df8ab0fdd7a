"""Pseudo-subjects: realistic variation of a real healthy 3D volume with MONAI transforms.

The real brains in ``assets/templates`` are few (MNI152 2009a, Colin27 with and without
skull, one low-resolution ITK subject), so the cohort is made of *pseudo-subjects*: each
is one real brain passed through a random, seeded chain of MONAI transforms

    spatial  (``spatial_augment``, one resampling, same warp for every channel):
        Rand3DElasticd  - smooth non-rigid deformation (a few mm) combined with an affine:
                          rotation up to ~10 deg, anisotropic scale 0.9-1.1, shift, small shear
        RandFlipd       - left-right mirror (a mirrored brain is still plausible anatomy)
    intensity (``intensity_augment``, image only, after any synthetic lesion is drawn):
        RandBiasFieldd  - smooth multiplicative bias field
        RandAdjustContrastd - gamma 0.75-1.35
        RandGaussianSmoothd - in-plane blur and through-plane blur (thick slices)
        RandSimulateLowResolutiond - down/up sampling (resolution loss)
        RandGibbsNoised - light ringing (rarely)
        RandRicianNoised - low Rician noise (MR magnitude noise)

Volumes are handled at ``WORK_SPACING`` (1.5 mm isotropic; the shared preprocessing
resizes a ~190 mm square crop to 128 px, i.e. ~1.5 mm per model pixel, so nothing is
lost) and cropped to the head's bounding box before augmenting, which keeps one
pseudo-subject at ~0.3 s on 2 CPU cores. Everything is deterministic for a given seed
(``set_random_state`` on every transform).

Arrays follow the project convention (``anomaly.scan``): (S, H, W), axial slices
inferior -> superior, rows anterior -> posterior, columns patient right -> left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from anomaly.scan import ras_to_display

TEMPLATES = Path(__file__).resolve().parents[2] / "assets" / "templates"
WORK_SPACING = 1.5  # mm, isotropic working grid of the pseudo-subjects
ITK_SPACING = 2.0  # the ITK subject stays low resolution (its own scanner, 2x2x3 mm)
MARGIN_MM = 9.0  # margin around the head's bounding box (room for the warp)

SOURCES = ("mni152", "colin27", "itk")


@dataclass
class SourceVolume:
    """A real healthy volume on the working grid, display order, intensities ~[0, 1].

    images: variant -> (S, H, W) float32 (``stripped`` and/or ``skull``);
    brain: (S, H, W) bool brain mask (ground truth for the brain extractor);
    wm / gm: (S, H, W) float32 tissue probabilities in [0, 1] or None.
    """

    name: str
    images: dict[str, np.ndarray]
    brain: np.ndarray
    spacing: tuple[float, float, float]
    wm: np.ndarray | None = None
    gm: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.brain.shape)  # type: ignore[return-value]


def _load_display(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    a = ras_to_display(np.asarray(img.dataobj, dtype=np.float32))
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    return a.astype(np.float32), (zz, zy, zx)  # display (S, H, W) <- RAS (z, y, x)


def resample(a: np.ndarray, spacing, new_spacing, mode: str = "area") -> np.ndarray:
    """Resample a (S, H, W) array from ``spacing`` to ``new_spacing`` (mm per axis)."""
    if np.isscalar(new_spacing):
        new_spacing = (float(new_spacing),) * 3
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(a.shape, spacing, new_spacing))
    if size == tuple(a.shape):
        return np.asarray(a, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    if mode == "area" and all(o <= i for o, i in zip(size, a.shape)):
        out = F.adaptive_avg_pool3d(t, size)
    else:
        out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def _ball(r: int) -> np.ndarray:
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= r * r


def _largest_component(m: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(m)
    if n <= 1:
        return m.astype(bool)
    sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def clean_mask(m: np.ndarray, close: int = 1) -> np.ndarray:
    """Largest 3D component, closed, holes filled (3D and per axial slice)."""
    m = _largest_component(np.asarray(m, bool))
    if close:
        m = ndimage.binary_closing(m, _ball(close), border_value=0) | m
    m = ndimage.binary_fill_holes(m)
    return np.stack([ndimage.binary_fill_holes(s) for s in m])


def _robust_scale(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(a[mask], 99.5)) if mask.any() else float(a.max())
    return np.clip(a / max(hi, 1e-6), 0, 1.5).astype(np.float32)


def classical_skull_strip(x: np.ndarray, spacing_mm: float = 2.0) -> np.ndarray:
    """Morphological brain mask of a T1 with skull (erode, largest component, dilate back).

    Only used to make an approximate reference mask for the ITK subject (which comes
    without one); checked by eye in docs/brainmask.png.
    """
    r = max(1, int(round(4.0 / spacing_mm)))
    fg = x > 0.3
    m = _largest_component(ndimage.binary_erosion(fg, _ball(r)))
    m = ndimage.binary_dilation(m, _ball(r)) & (x > 0.15)
    m = ndimage.binary_closing(m, _ball(r))
    return np.stack([ndimage.binary_fill_holes(s) for s in m])


def _crop_to(arrs: dict, box) -> dict:
    sl = tuple(slice(a, b) for a, b in box)
    return {k: (None if v is None else np.ascontiguousarray(v[sl])) for k, v in arrs.items()}


def _bbox(m: np.ndarray, margin: int) -> list[tuple[int, int]]:
    idx = np.nonzero(m)
    return [(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin)) for i, n in zip(idx, m.shape)]


PRELOADED: dict = {}  # (name, spacing) -> SourceVolume, filled in worker processes


def load_source(name: str, spacing: float | None = None) -> SourceVolume:
    """Cached ``_load_source`` (see there); worker processes get it pre-loaded."""
    key = (name, spacing)
    if key not in PRELOADED:
        PRELOADED[key] = _load_source(name, spacing)
    return PRELOADED[key]


def _load_source(name: str, spacing: float | None = None) -> SourceVolume:
    """One real healthy brain on the working grid (cached; treat the arrays as read-only).

    ``mni152``: ICBM152 2009a T1, skull-stripped, with GM/WM maps; brain = T1 > 0.
    ``colin27``: Colin27 T1 with skull (``skull``) and skull-stripped (``stripped``); brain
    = colin27_t1_brain > 0, cleaned (largest component, closed, holes filled).
    ``itk``: the low-resolution ITK subject (with skull), resampled to 2 mm isotropic;
    brain = an approximate classical reference mask (``classical_skull_strip``).
    """
    if name == "mni152":
        sp = spacing or WORK_SPACING
        t1, s0 = _load_display(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")
        wm, _ = _load_display(TEMPLATES / "mni152_2009a_wm_1mm.nii.gz")
        gm, _ = _load_display(TEMPLATES / "mni152_2009a_gm_1mm.nii.gz")
        brain = resample((t1 > 0).astype(np.float32), s0, sp) > 0.5
        brain = clean_mask(brain)
        t1 = resample(t1, s0, sp)
        wm = np.clip(resample(wm / 255.0, s0, sp), 0, 1)
        gm = np.clip(resample(gm / 255.0, s0, sp), 0, 1)
        t1 = _robust_scale(t1, brain) * brain
        arrs = {"stripped": t1, "brain": brain, "wm": wm, "gm": gm}
        fg = brain
        notes = ["skull-stripped template; brain mask = T1 > 0"]
    elif name == "colin27":
        sp = spacing or WORK_SPACING
        head, s0 = _load_display(TEMPLATES / "colin27_t1_1mm.nii.gz")
        br, _ = _load_display(TEMPLATES / "colin27_t1_brain_1mm.nii.gz")
        brain = resample((br > 0).astype(np.float32), s0, sp) > 0.5
        brain = clean_mask(brain, close=max(1, int(round(2.0 / sp))))
        head = resample(head, s0, sp)
        br = resample(br, s0, sp)
        head = _robust_scale(head, brain)
        stripped = _robust_scale(br, brain) * brain
        arrs = {"skull": head, "stripped": stripped, "brain": brain, "wm": None, "gm": None}
        fg = head > 0.05
        notes = ["brain mask = colin27_t1_brain > 0, cleaned; no tissue maps (estimated by lesions)"]
    elif name == "itk":
        sp = spacing or ITK_SPACING
        head, s0 = _load_display(TEMPLATES / "itk_subject_t1_2x2x3mm.nii.gz")
        head = resample(head, s0, sp, mode="trilinear")
        head = np.clip(head / max(float(np.percentile(head, 99.5)), 1e-6), 0, 1.5).astype(np.float32)
        brain = clean_mask(classical_skull_strip(head, sp), close=0)
        head = _robust_scale(head, brain)
        arrs = {"skull": head, "brain": brain, "wm": None, "gm": None}
        fg = head > 0.05
        notes = ["real subject with skull, 2x2x3 mm resampled to 2 mm; brain mask approximate (classical)"]
    else:
        raise ValueError(f"unknown source {name!r}; choose from {SOURCES}")
    box = _bbox(fg, int(round(MARGIN_MM / sp)))
    arrs = _crop_to(arrs, box)
    images = {k: arrs[k] for k in ("skull", "stripped") if k in arrs}
    return SourceVolume(name, images, arrs["brain"], (sp, sp, sp), arrs["wm"], arrs["gm"], notes)


# ----------------------------------------------------------------------------- transforms


class RandCoarseElastic3D:
    """3D smooth deformation + affine in one resampling, built from MONAI parts.

    MONAI's ``Rand2DElastic`` recipe in 3D: ``RandDeformGrid`` (random offsets on a coarse
    control grid, ``control_mm`` apart) -> ``RandAffineGrid`` (rotation, scale, shear,
    shift) -> trilinear upsampling of the control grid -> ``Resample``. Much cheaper than
    ``Rand3DElastic`` (which smooths a full-resolution noise field). Channels of one call
    share the warp; ``set_random_state`` makes it deterministic.
    """

    def __init__(self, strength: float = 1.0, spacing: float = WORK_SPACING, control_mm: float = 18.0,
                 displacement_mm: float = 2.0, rotate_deg: float = 10.0):
        from monai.transforms import RandAffineGrid, RandDeformGrid, Resample

        s = strength
        rot = np.deg2rad(rotate_deg) * s
        self.cp = max(2, int(round(control_mm / spacing)))
        d = displacement_mm / spacing * s
        self.deform = RandDeformGrid(spacing=(self.cp,) * 3, magnitude_range=(0.5 * d, d))
        self.affine = RandAffineGrid(
            rotate_range=(rot, rot * 0.4, rot * 0.4),  # mostly in-plane (about the S axis)
            shear_range=(0.03 * s,) * 6,
            translate_range=(4.0 / spacing * s, 6.0 / spacing * s, 6.0 / spacing * s),
            scale_range=(0.1 * s,) * 3,  # anisotropic head-size/shape variation, 0.9-1.1
        )
        self.resample = Resample()
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int) -> "RandCoarseElastic3D":
        self.R = np.random.RandomState(int(seed) % (2**32))
        self.deform.set_random_state(seed=int(self.R.randint(2**31)))
        self.affine.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def grid(self, shape) -> torch.Tensor:
        from monai.transforms import CenterSpatialCrop

        g = self.deform(spatial_size=shape)
        g = self.affine(grid=g)
        g = F.interpolate(torch.as_tensor(g, dtype=torch.float32)[None], scale_factor=(float(self.cp),) * 3,
                          mode="trilinear", align_corners=False, recompute_scale_factor=True)[0]
        return CenterSpatialCrop(roi_size=shape)(g)

    def __call__(self, channels: np.ndarray) -> np.ndarray:
        """(C, S, H, W) float32 -> warped (C, S, H, W)."""
        x = torch.from_numpy(np.ascontiguousarray(channels, np.float32))
        g = self.grid(tuple(x.shape[1:]))
        out = self.resample(x, g, mode="bilinear", padding_mode="zeros")
        return np.asarray(out.cpu().numpy() if hasattr(out, "cpu") else out, np.float32)


def spatial_augment(src: SourceVolume, seed: int, strength: float = 1.0, variants=None) -> SourceVolume:
    """One pseudo-subject's anatomy: the same random warp for image(s), brain mask and tissue maps.

    Smooth non-rigid deformation + affine (``RandCoarseElastic3D``), then a left-right
    mirror with probability 0.5 (``monai.transforms.Flip``). Deterministic for ``seed``
    (the same warp whichever image ``variants`` are carried along).
    """
    from monai.transforms import Flip

    keys = list(src.images) if variants is None else [k for k in src.images if k in variants]
    maps = {"brain": src.brain.astype(np.float32)}
    if src.wm is not None:
        maps["wm"] = src.wm
    if src.gm is not None:
        maps["gm"] = src.gm
    names = keys + list(maps)
    stack = np.stack([src.images[k] for k in keys] + list(maps.values()))
    warp = RandCoarseElastic3D(strength, src.spacing[0]).set_random_state(seed)
    with torch.no_grad():
        out = warp(stack)
    if warp.R.uniform() < 0.5:  # left-right mirror (columns)
        out = np.asarray(Flip(spatial_axis=2)(torch.from_numpy(out)))
    arr = dict(zip(names, out))
    brain = arr.pop("brain") > 0.5  # the source mask is clean; a smooth warp keeps it so
    wm = np.clip(arr.pop("wm"), 0, 1) if "wm" in arr else None
    gm = np.clip(arr.pop("gm"), 0, 1) if "gm" in arr else None
    images = {k: np.clip(arr[k], 0, None) for k in keys}
    if "stripped" in images:
        images["stripped"] = images["stripped"] * brain
    return SourceVolume(src.name, images, brain, src.spacing, wm, gm, list(src.notes))


def _intensity_transform(strength: float = 1.0):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandBiasFieldd,
        RandGaussianSmoothd,
        RandGibbsNoised,
        RandRicianNoised,
        RandSimulateLowResolutiond,
    )

    s = strength
    return Compose(
        [
            RandBiasFieldd(keys=["img"], degree=3, coeff_range=(0.0, 0.25 * s), prob=0.8),
            RandAdjustContrastd(keys=["img"], gamma=(1 - 0.25 * s, 1 + 0.35 * s), prob=0.7),
            # blur: sigma_x is the first spatial axis = S (through-plane, thick slices)
            RandGaussianSmoothd(keys=["img"], sigma_x=(0.2, 1.2 * s), sigma_y=(0.0, 0.5 * s),
                                sigma_z=(0.0, 0.5 * s), prob=0.5),
            RandSimulateLowResolutiond(keys=["img"], zoom_range=(0.6, 0.9), prob=0.2 * s,
                                       downsample_mode="area", upsample_mode="trilinear"),
            RandGibbsNoised(keys=["img"], alpha=(0.0, 0.25 * s), prob=0.15),
            RandRicianNoised(keys=["img"], std=0.03 * s, relative=True, sample_std=True, prob=0.9),
        ]
    )


def intensity_augment(image: np.ndarray, seed: int, strength: float = 1.0, keep_zero: np.ndarray | None = None) -> np.ndarray:
    """Scanner-like variation of one (S, H, W) image; deterministic for ``seed``.

    ``keep_zero``: voxels forced back to 0 afterwards (the background of a skull-stripped
    image stays exactly 0, as in real stripped data).
    """
    tr = _intensity_transform(strength)
    tr.set_random_state(seed=int(seed) % (2**32))
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]
    with torch.no_grad():
        out = tr({"img": x})["img"]
    a = np.asarray(out[0].cpu().numpy() if hasattr(out, "cpu") else out[0], np.float32)
    a = np.clip(np.nan_to_num(a), 0, None)
    if keep_zero is not None:
        a = a * ~np.asarray(keep_zero, bool)
    return a


def pseudo_subject(src: SourceVolume, seed: int, strength: float = 1.0, variants=None) -> SourceVolume:
    """Spatial then intensity augmentation of the image variants (convenience, no lesion)."""
    ps = spatial_augment(src, seed, strength, variants=variants)
    imgs = {}
    for k, v in ps.images.items():
        imgs[k] = intensity_augment(v, seed + 7919, strength, keep_zero=~ps.brain if k == "stripped" else None)
    ps.images = imgs
    return ps
