"""Brain extraction for T1 slices with and without skull, also at low resolution.

A small 2D MONAI ``UNet`` (channels 8-16-32-64, strides 2-2-2, no residual units, 1 in /
1 out; 41k parameters, ~0.65 CPU-seconds for 180 slices) sees the
whole slice: padded to a square (centred), resized to 128 x 128 and normalised per slice
(1st-99th percentile -> [0, 1], clipped). Its probability map is thresholded at 0.5 on
the 128 grid, cleaned (for a stack of N > 1 slices of one scan: a 3D opening, the largest
3D-connected component, grown back within the thresholded mask; for a single slice, 2D
components smaller than 10 % of the largest are dropped),
holes are filled per slice, and the map is resized back to the input's pixels.

Training data (``python -m anomaly.brainmask train``): pseudo-subjects
(``anomaly.data.augment``: smooth warp, affine, mirror, bias field, gamma, blur,
resolution loss, Gibbs ringing, Rician noise) of Colin27 with skull (target: Colin27's
brain mask, colin27_t1_brain > 0, cleaned), Colin27 skull-stripped and MNI152 stripped
(target: their brain region); axial, coronal and sagittal slices; per slice random
anisotropic down-scaling (pixel counts of 0.35-1x, non-square pixels such as 2 x 3 mm),
field-of-view crops and padding, in-plane rotation, flips and a random monotone intensity
curve. The ITK subject is never trained on: it is the out-of-distribution check, scored
against an approximate classical reference mask (``augment.classical_skull_strip``).

``default_extractor()`` returns the callable used by ``anomaly.preprocess.extract_brain``:
(N, H, W) float32 -> (N, H, W) bool; it raises ``FileNotFoundError`` when no checkpoint
is there, so the preprocessing falls back to the classical Otsu mask.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

SIZE = 128
CHANNELS = (8, 16, 32, 64)
STRIDES = (2, 2, 2)
NUM_RES_UNITS = 0
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "brainmask"
NORMALISATION = "per slice: (x - p1) / (p99 - p1), clipped to [0, 1]; slice padded to a square (centred, 0) and resized to 128x128"
MIN_COMPONENT_2D = 0.10  # single slices: drop 2D components < 10 % of the largest
OPEN_ITERATIONS = 2  # scans: 3D opening (on the 128 grid) before the largest component
_OPEN = ndimage.generate_binary_structure(3, 1)
_INPLANE = np.zeros((3, 3, 3), bool)
_INPLANE[1] = ndimage.generate_binary_structure(2, 1)


def build_net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=CHANNELS, strides=STRIDES,
                num_res_units=NUM_RES_UNITS)


# ----------------------------------------------------------------------------- geometry


def normalise(slices: np.ndarray) -> np.ndarray:
    """Per-slice robust scaling: 1st-99th percentile -> [0, 1], clipped. (N, H, W) -> float32."""
    a = np.nan_to_num(np.asarray(slices, np.float32))
    n = len(a)
    sub = a[:, ::2, ::2].reshape(n, -1) if min(a.shape[1:]) >= 64 else a.reshape(n, -1)
    lo, hi = np.percentile(sub, [1, 99], axis=1)
    scale = np.where(hi - lo > 1e-6, hi - lo, 1.0)
    return np.clip((a - lo[:, None, None]) / scale[:, None, None], 0, 1).astype(np.float32)


def _square_pad(h: int, w: int) -> tuple[int, int, int]:
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def to_model(slices: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """(N, H, W) raw slices -> (N, 1, size, size) normalised model input."""
    x = normalise(slices)
    n, h, w = x.shape
    side, r0, c0 = _square_pad(h, w)
    t = torch.zeros((n, 1, side, side), dtype=torch.float32)
    t[:, 0, r0 : r0 + h, c0 : c0 + w] = torch.from_numpy(x)
    if side > size:
        return F.interpolate(t, size=(size, size), mode="area")
    if side < size:
        return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t


def mask_to_model(masks: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """(N, H, W) bool targets -> (N, 1, size, size) float in {0, 1} (same geometry as ``to_model``)."""
    m = np.asarray(masks, np.float32)
    n, h, w = m.shape
    side, r0, c0 = _square_pad(h, w)
    t = torch.zeros((n, 1, side, side), dtype=torch.float32)
    t[:, 0, r0 : r0 + h, c0 : c0 + w] = torch.from_numpy(m)
    mode = "area" if side > size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return (F.interpolate(t, size=(size, size), mode=mode, **kw) > 0.5).float()


def from_model(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, size, size) float map -> (N, H, W) float on the input's pixels."""
    h, w = shape
    side, r0, c0 = _square_pad(h, w)
    t = torch.from_numpy(np.ascontiguousarray(prob, np.float32))[:, None]
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
    return t[:, 0, r0 : r0 + h, c0 : c0 + w].numpy()


def postprocess(prob: np.ndarray, volume: bool) -> np.ndarray:
    """Model-grid probabilities (N, S, S) -> cleaned probabilities (threshold 0.5 keeps the mask).

    Largest 3D component (``volume``) or 2D components >= 10 % of the largest per slice;
    holes filled per slice. Probabilities are kept at the border so the resize back to the
    input grid gives a smooth edge.
    """
    m = prob > 0.5
    if volume and len(m) > 1:
        # open first so that false positives joined to the brain by thin bridges (orbits,
        # neck, scalp at the vertex) fall off, keep the largest 3D component, grow it back
        core = ndimage.binary_opening(m, structure=_OPEN, iterations=OPEN_ITERATIONS)
        if not core.any():
            core = m
        lab, n = ndimage.label(core)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            core = lab == (int(np.argmax(sizes)) + 1)
        m = m & ndimage.binary_dilation(core, structure=_OPEN, iterations=OPEN_ITERATIONS + 1)
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (int(np.argmax(sizes)) + 1)
    else:
        for i in range(len(m)):
            lab, n = ndimage.label(m[i])
            if n > 1:
                sizes = np.bincount(lab.ravel())[1:]
                m[i] = np.isin(lab, 1 + np.flatnonzero(sizes >= MIN_COMPONENT_2D * sizes.max()))
    filled = ndimage.binary_fill_holes(m, structure=_INPLANE) if len(m) else m  # per slice, one call
    keep = ndimage.binary_dilation(filled, structure=np.ones((1, 3, 3), bool))
    out = np.where(keep, prob, 0.0)
    out = np.where(filled & ~m, 1.0, out)  # filled holes
    out = np.where(filled, np.maximum(out, 0.5001), out)  # the kept mask stays above 0.5
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- extractor


class BrainExtractor:
    """(N, H, W) float32 -> (N, H, W) bool brain masks; N > 1 slices are one scan."""

    def __init__(self, net: torch.nn.Module, card: dict | None = None, batch: int = 64):
        self.net = net.eval()
        self.card = card or {}
        self.batch = batch

    @torch.no_grad()
    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        """Raw model-grid probabilities (N, 128, 128)."""
        x = to_model(slices)
        out = []
        for i in range(0, len(x), self.batch):
            out.append(torch.sigmoid(self.net(x[i : i + self.batch]))[:, 0])
        return torch.cat(out).numpy() if out else np.zeros((0, SIZE, SIZE), np.float32)

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        a = np.asarray(slices, np.float32)
        if a.ndim == 2:
            a = a[None]
        if len(a) == 0:
            return np.zeros(a.shape, bool)
        p = postprocess(self.probabilities(a), volume=len(a) > 1)
        return from_model(p, a.shape[1:]) > 0.5


def load_extractor(ckpt_dir: Path | str = DEFAULT_DIR) -> BrainExtractor:
    from anomaly.checkpoints import WEIGHTS, load_card, load_weights

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / WEIGHTS).exists():
        raise FileNotFoundError(f"no brain-extraction checkpoint at {ckpt_dir} (python -m anomaly.brainmask train)")
    net = build_net()
    net.load_state_dict(load_weights(ckpt_dir))
    return BrainExtractor(net, load_card(ckpt_dir))


_DEFAULT: BrainExtractor | None = None


def default_extractor() -> BrainExtractor:
    """The trained extractor from checkpoints/brainmask, loaded once; FileNotFoundError if absent."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_extractor(DEFAULT_DIR)
    return _DEFAULT


# ----------------------------------------------------------------------------- training data

# (source, image variant) cycle of the training pseudo-subjects: with-skull Colin27 twice
TRAIN_VARIANTS = (("colin27", "skull"), ("mni152", "stripped"), ("colin27", "skull"), ("colin27", "stripped"))


def _planes(img: np.ndarray, brain: np.ndarray, rng: np.random.Generator, other_step: int = 5):
    """Axial slices (all), coronal and sagittal (every ``other_step``-th) in display orientation."""
    out = [(img[i], brain[i]) for i in range(img.shape[0])]
    off = int(rng.integers(other_step))
    for i in range(off, img.shape[1], other_step):
        out.append((img[::-1, i, :], brain[::-1, i, :]))
    for i in range(off, img.shape[2], other_step):
        out.append((img[::-1, :, i], brain[::-1, :, i]))
    return out


def slice_augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """Per-slice geometry/intensity variation (numpy + MONAI), returns (img, mask) 2D."""
    from monai.transforms import RandHistogramShift

    img = np.asarray(img, np.float32)
    mask = np.asarray(mask, bool)
    # rotation (in-plane) and 90-degree turns / flips (PNG uploads come in any orientation)
    if rng.uniform() < 0.3:
        ang = rng.uniform(-15, 15)
        img = ndimage.rotate(img, ang, reshape=True, order=1, mode="constant", cval=0.0)
        mask = ndimage.rotate(mask.astype(np.float32), ang, reshape=True, order=1) > 0.5
    if rng.uniform() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.uniform() < 0.1:
        k = int(rng.integers(1, 4))
        img, mask = np.rot90(img, k), np.rot90(mask, k)
    # field of view: crop into the head (tight FOV) or add background
    h, w = img.shape
    u = rng.uniform()
    if u < 0.3:
        r0, r1 = int(rng.uniform(0, 0.15) * h), h - int(rng.uniform(0, 0.15) * h)
        c0, c1 = int(rng.uniform(0, 0.15) * w), w - int(rng.uniform(0, 0.15) * w)
        img, mask = img[r0:r1, c0:c1], mask[r0:r1, c0:c1]
    elif u < 0.7:
        pr = [int(rng.uniform(0, 0.3) * h) for _ in range(2)]
        pc = [int(rng.uniform(0, 0.3) * w) for _ in range(2)]
        img = np.pad(img, (pr, pc))
        mask = np.pad(mask, (pr, pc))
    # resolution / pixel shape: anisotropic down-scaling (area), e.g. 2 x 3 mm pixels
    if rng.uniform() < 0.6:
        fr, fc = rng.uniform(0.35, 1.0), rng.uniform(0.35, 1.0)
        if rng.uniform() < 0.5:
            fc = fr * rng.uniform(0.8, 1.25)
        nh, nw = max(16, int(round(img.shape[0] * fr))), max(16, int(round(img.shape[1] * min(fc, 1.0))))
        t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        img = F.adaptive_avg_pool2d(t, (nh, nw))[0, 0].numpy() if nh <= img.shape[0] and nw <= img.shape[1] \
            else F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0].numpy()
        tm = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None]
        mask = F.interpolate(tm, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    # a random monotone intensity curve now and then
    if rng.uniform() < 0.2:
        hs = RandHistogramShift(num_control_points=(4, 8), prob=1.0)
        hs.set_random_state(seed=int(rng.integers(2**31)))
        img = np.asarray(hs(torch.from_numpy(np.ascontiguousarray(img))[None]))[0]
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(mask)


def make_pool(n_subjects: int, seed: int, spacing: float | None = None, augment_slices: bool = True,
              planes: bool = True, progress: bool = True, variants=TRAIN_VARIANTS):
    """Model-grid training pairs from fresh pseudo-subjects: (X (N,1,S,S) float16, Y (N,1,S,S) bool)."""
    from tqdm import tqdm

    from anomaly.data.augment import load_source, pseudo_subject

    xs, ys = [], []
    ss = np.random.SeedSequence([int(seed), 4242])
    for i, child in enumerate(tqdm(ss.spawn(n_subjects), desc="brainmask data", disable=not progress,
                                   file=sys.stderr)):
        src_name, var = variants[i % len(variants)]
        rng = np.random.default_rng(child)
        src = load_source(src_name, spacing)
        ps = pseudo_subject(src, int(rng.integers(2**31)), strength=1.2, variants=[var])
        img, brain = ps.images[var], ps.brain
        pairs = _planes(img, brain, rng) if planes else [(img[k], brain[k]) for k in range(img.shape[0])]
        imgs, msks = [], []
        for a, m in pairs:
            if augment_slices:
                a, m = slice_augment(a, m, rng)
            imgs.append(a)
            msks.append(m)
        for a, m in zip(imgs, msks):  # shapes differ after augmentation: one at a time
            xs.append(to_model(a[None]).half())
            ys.append(mask_to_model(m[None]).bool())
    return torch.cat(xs), torch.cat(ys)


def validation_volumes(seed: int, spacing: float | None = None):
    """Held-out augmented pseudo-subjects (one per training variant): [(name, img, brain)]."""
    from anomaly.data.augment import load_source, pseudo_subject

    out = []
    for j, (src_name, var) in enumerate((("colin27", "skull"), ("colin27", "stripped"), ("mni152", "stripped"))):
        ps = pseudo_subject(load_source(src_name, spacing), 10_000_000 + 1000 * int(seed) + j, variants=[var])
        out.append((f"{src_name}_{var}", ps.images[var], ps.brain))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def evaluate(ext: BrainExtractor, volumes) -> dict:
    """Dice per volume in the scan mode (N slices at once) and the single-slice mode."""
    from anomaly.preprocess import informative_slices

    res = {}
    for name, img, brain in volumes:
        vol = ext(img)
        inf = informative_slices(brain)
        single = np.concatenate([ext(img[k : k + 1]) for k in np.flatnonzero(inf)])
        res[name] = {"dice_volume": round(dice(vol, brain), 4),
                     "dice_single_slices": round(dice(single, brain[inf]), 4)}
    return res


def native_check(ext: BrainExtractor) -> dict:
    """Colin27 with skull at its native 1 mm (the training anatomy, not augmented)."""
    from anomaly.data.augment import TEMPLATES, _load_display, clean_mask

    head, _ = _load_display(TEMPLATES / "colin27_t1_1mm.nii.gz")
    br, _ = _load_display(TEMPLATES / "colin27_t1_brain_1mm.nii.gz")
    return evaluate(ext, [("colin27_skull_native", head, clean_mask(br > 0, close=2))])["colin27_skull_native"] | {
        "note": "same brain as the training data (not held out): checks the native-resolution path"}


def itk_check(ext: BrainExtractor) -> dict:
    from anomaly.data.augment import load_source

    src = load_source("itk")
    img = src.images["skull"]
    m = ext(img)
    return {"dice_vs_classical_reference": round(dice(m, src.brain), 4),
            "reference": "approximate: classical morphological skull strip (augment.classical_skull_strip), "
                         "checked by eye; not a manual segmentation",
            "mask_volume_ml": round(float(m.sum()) * 8 / 1000, 1),
            "reference_volume_ml": round(float(src.brain.sum()) * 8 / 1000, 1)}


# ----------------------------------------------------------------------------- training


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)  # soft Dice over the whole batch (empty slices do not dominate)
    d = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + d


def _batch_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.35, 0.35, generator=g))
    x = x.clamp(0, 1) ** gamma
    x = x * torch.empty(n, 1, 1, 1).uniform_(0.85, 1.15, generator=g)
    x = x + torch.randn(x.shape, generator=g) * torch.empty(n, 1, 1, 1).uniform_(0, 0.04, generator=g)
    return x.clamp(0, 1.2)


def train(out: Path | str, minutes: float = 12.0, seed: int = 0, n_subjects: int | None = None,
          batch: int = 32, lr: float = 3e-3, max_steps: int | None = None, spacing: float | None = None,
          evaluate_after: bool = True, progress: bool = True, cache: Path | str | None = None,
          init: Path | str | None = None) -> dict:
    """Train the extractor for ``minutes`` (data generation included) and save the checkpoint.

    ``cache``: a folder where the generated training slices are kept (reused when the same
    subjects/seed/spacing are asked for again). ``init``: a checkpoint folder to start from
    (continued training; recorded in the card).
    """
    from tqdm import tqdm

    from anomaly.checkpoints import save_checkpoint

    t0 = time.time()
    torch.manual_seed(seed)
    if n_subjects is None:
        n_subjects = max(4, min(16, int(round(minutes))))
    cache_file = None
    if cache is not None:
        cache_file = Path(cache) / f"brainmask-pool-{n_subjects}-{seed}-{spacing}.pt"
    if cache_file is not None and cache_file.exists():
        X, Y = torch.load(cache_file)
    else:
        X, Y = make_pool(n_subjects, seed, spacing, progress=progress)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save((X, Y), cache_file)
    net = build_net()
    prior = None
    if init is not None:
        from anomaly.checkpoints import load_card, load_weights

        net.load_state_dict(load_weights(Path(init)))
        prior = load_card(Path(init))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    done_before = 0 if prior is None else int(prior.get("total_steps", prior.get("steps", 0)) or 0)
    g = torch.Generator().manual_seed(seed + 7919 * done_before)  # a continued run draws new batches
    budget = minutes * 60.0
    t_train = time.time()
    step, losses = 0, []
    total = max_steps or 10**9
    bar = tqdm(total=None if max_steps is None else max_steps, desc="brainmask train", disable=not progress,
               file=sys.stderr)
    net.train()
    while step < total:
        frac = (time.time() - t0) / budget if max_steps is None else step / max(1, total)
        if frac >= 1.0:
            break
        for grp in opt.param_groups:  # warm-up then cosine decay over the time budget
            grp["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
        idx = torch.randint(len(X), (batch,), generator=g)
        x = _batch_augment(X[idx].float(), g)
        y = Y[idx].float()
        if torch.rand(1, generator=g).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 100 == 0:  # a killed run can go on from here (--init OUT.partial)
            from anomaly.checkpoints import save_checkpoint as _save

            _save(Path(str(out) + ".partial"), dict(net.state_dict()),
                  {"method": "brainmask", "partial": True, "steps": step, "seed": seed,
                   "total_steps": step + (0 if prior is None else int(prior.get("total_steps", prior.get("steps", 0)) or 0))})
            net.train()
    bar.close()
    net.eval()
    ext = BrainExtractor(net)
    card = {
        "method": "brainmask",
        "title": "2D UNet brain extraction (with/without skull, low resolution)",
        "architecture": {"net": "monai.networks.nets.UNet", "spatial_dims": 2, "channels": list(CHANNELS),
                         "strides": list(STRIDES), "num_res_units": NUM_RES_UNITS, "in": 1, "out": 1},
        "input_size": [SIZE, SIZE],
        "normalisation": NORMALISATION,
        "postprocessing": "sigmoid > 0.5; scans (N>1): 3D opening (2 iterations, 128 grid), largest 3D "
                          "component, grown back within the mask; single slices: 2D components >= 10% of the "
                          "largest; holes filled per slice; resized back to the input",
        "training_data": {
            "pseudo_subjects": n_subjects,
            "variants": [f"{s}_{v}" for s, v in TRAIN_VARIANTS],
            "targets": "Colin27 brain = colin27_t1_brain > 0 (cleaned); MNI152 brain = T1 > 0",
            "slices": int(len(X)),
            "planes": "axial (all), coronal and sagittal (every 5th)",
            "augmentation": "anomaly.data.augment (warp, affine, mirror, bias, gamma, blur, low resolution, Gibbs, "
                            "Rician noise; strength 1.2) + per slice anisotropic down-scaling 0.35-1x, FOV crop/pad, "
                            "rotation, flips, histogram shift; batch gamma/scale/noise",
            "held_out": "the ITK subject (never trained on)",
        },
        "command": "python -m anomaly.brainmask " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("brainmask.py")
        or "anomaly.brainmask" in " ".join(sys.argv) else f"anomaly.brainmask.train(minutes={minutes}, seed={seed})",
        "seed": seed,
        "steps": step,
        "continued_from": None if prior is None else {"steps": prior.get("steps"), "total_steps": prior.get(
            "total_steps", prior.get("steps")), "checkpoint_hash": prior.get("checkpoint_hash"),
            "wall_seconds": prior.get("wall_seconds"), "command": prior.get("command")},
        "total_steps": step + (0 if prior is None else int(prior.get("total_steps", prior.get("steps", 0)) or 0)),
        "batch": batch,
        "lr": lr,
        "loss": "BCE + soft Dice over the batch",
        "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
        "train_seconds": round(time.time() - t_train, 1),
    }
    if evaluate_after:
        te = time.time()
        card["validation"] = {
            "held_out_augmented": evaluate(ext, validation_volumes(seed, spacing)),
            "itk_subject": itk_check(ext),
            "colin27_native_1mm": native_check(ext),
        }
        card["validation_seconds"] = round(time.time() - te, 1)
    card["wall_seconds"] = round(time.time() - t0, 1)
    tensors = {k: v for k, v in net.state_dict().items()}
    card = save_checkpoint(Path(out), tensors, card)
    import shutil

    shutil.rmtree(Path(str(out) + ".partial"), ignore_errors=True)
    return card


# ----------------------------------------------------------------------------- montage


def montage(out_png: Path | str, ext: BrainExtractor | None = None) -> Path:
    """Predicted masks (red) on Colin27 with skull, MNI152 and the ITK subject (axial, coronal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly.data.augment import load_source, _load_display, TEMPLATES

    ext = ext or default_extractor()
    rows = []
    colin, _ = _load_display(TEMPLATES / "colin27_t1_1mm.nii.gz")
    mni, _ = _load_display(TEMPLATES / "mni152_2009a_t1_1mm.nii.gz")
    itk_raw, _ = _load_display(TEMPLATES / "itk_subject_t1_2x2x3mm.nii.gz")  # native 2x3 mm pixels
    itk = load_source("itk").images["skull"]
    for name, vol in (("Colin27 with skull (1 mm)", colin), ("MNI152 stripped (1 mm)", mni),
                      ("ITK subject (2x2 mm)", itk), ("ITK native 2x3 mm pixels", itk_raw)):
        m = ext(vol)
        rows.append((name, vol, m))
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.2 * len(rows)))
    for r, (name, vol, m) in enumerate(rows):
        zs = np.flatnonzero(m.reshape(len(m), -1).any(1))
        z0, z1 = (zs.min(), zs.max()) if len(zs) else (0, len(vol) - 1)
        picks = [int(z0 + f * (z1 - z0)) for f in (0.12, 0.35, 0.6, 0.85)]
        for c, z in enumerate(picks):
            ax = axes[r, c]
            ax.imshow(vol[z], cmap="gray")
            ax.contour(m[z], [0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{name} z={z}", fontsize=8)
            ax.axis("off")
        ax = axes[r, 4]
        y = vol.shape[1] // 2
        ax.imshow(vol[::-1, y, :], cmap="gray")
        ax.contour(m[::-1, y, :], [0.5], colors="r", linewidths=0.8)
        ax.set_title("coronal (from the axial masks)", fontsize=8)
        ax.axis("off")
    plt.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(out_png, dpi=70)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.brainmask", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the brain extractor")
    t.add_argument("--out", default=str(DEFAULT_DIR))
    t.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget incl. data generation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--subjects", type=int, default=None, help="training pseudo-subjects (default: 1 per minute, 4-16)")
    t.add_argument("--steps", type=int, default=None, help="fixed number of steps instead of the time budget")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--cache", default=None, help="folder to keep/reuse the generated training slices")
    t.add_argument("--init", default=None, help="checkpoint folder to continue training from")
    t.add_argument("--lr", type=float, default=3e-3)
    m = sub.add_parser("montage", help="PNG of predicted masks on Colin27, MNI152 and the ITK subject")
    m.add_argument("--ckpt", default=str(DEFAULT_DIR))
    m.add_argument("--out", default="docs/brainmask.png")
    a = p.parse_args(argv)
    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    if a.cmd == "train":
        card = train(a.out, a.minutes, a.seed, a.subjects, max_steps=a.steps, cache=a.cache, init=a.init,
                     lr=a.lr)
        import json

        print(json.dumps({k: card.get(k) for k in ("steps", "final_loss", "validation", "wall_seconds")}, indent=2))
        return 0
    if a.cmd == "montage":
        print(montage(a.out, load_extractor(a.ckpt)))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
