"""DDAD's anomaly score refinement (ASR; Cai et al., MedIA 2023, section 3.4).

The discrepancy maps of DDAD are coarse (64x64 ensembles) and also light up where healthy
anatomy is hard to reconstruct. ASR is a small segmentation UNet that takes the image and the
maps (intra-discrepancy, inter-discrepancy, reconstruction residual) and outputs a refined
map. It is trained *self-supervised*: on healthy training slices with synthetic anomalies
drawn by ``synthetic_anomalies`` (this module's own generator: random smooth-edged blobs
filled with an intensity shift, a foreign patch of another slice, or a noise texture), and
the frozen DDAD ensembles computing the maps on the corrupted image. No lesion data is used:
the lesion generator of the cohort (``anomaly.data.lesions``) is neither imported nor copied.

``python -m anomaly.methods.ddad.asr --checkpoint checkpoints/ddad --data DIR --minutes M``
adds (or continues, with ``--resume``) an ASR stage on an existing DDAD checkpoint and
re-calibrates it; ``python -m anomaly.train ddad`` trains it after the ensembles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from scipy.ndimage import binary_erosion, gaussian_filter

ASR_ARCH = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
MAP_GAIN = {"intra": 10.0, "inter": 10.0, "rec": 5.0}  # bring the maps to ~unit range for the UNet
ASR_PREFIX = "asr."
# The refiner's input channels. The paper's four (image and DDAD's maps) are the default, and what a
# card without ``asr.architecture.inputs`` was trained on. ``ASYMMETRY_INPUTS`` add left-right
# mirror differences (signed; the model frame is centred on the brain box): brains are near-symmetric,
# most lesions are not, and symmetric reconstruction errors (cerebellar folia) cancel.
BASE_INPUTS = ("image", "intra", "inter", "rec")
ASYMMETRY_INPUTS = ("image_asymmetry", "rec_asymmetry")
ASYMMETRY_GAIN = 2.0


def refiner_input_names(arch: dict | None = None) -> tuple[str, ...]:
    """The input channels an ASR architecture dict names (the paper's four when it names none)."""
    return tuple((arch or {}).get("inputs", BASE_INPUTS))


def build_refiner(arch: dict | None = None) -> torch.nn.Module:
    """MONAI UNet: (image, intra, inter, reconstruction residual[, mirror asymmetries]) -> anomaly logits."""
    a = {**ASR_ARCH, **(arch or {})}
    return UNet(spatial_dims=2, in_channels=len(refiner_input_names(a)), out_channels=1,
                channels=tuple(a["channels"]), strides=tuple(a["strides"]), num_res_units=int(a["num_res_units"]),
                norm="batch")


def _mirror_difference(t: torch.Tensor) -> torch.Tensor:
    """t - (t mirrored left-right), signed."""
    return t - torch.flip(t, dims=[-1])


def refiner_inputs(x: torch.Tensor, maps: dict[str, torch.Tensor],
                   names: tuple[str, ...] = BASE_INPUTS) -> torch.Tensor:
    """(N,1,S,S) image + DualEnsemble outputs -> (N,len(names),S,S) refiner input."""
    rec = (x - maps["ndm_mean"]).abs() * MAP_GAIN["rec"]
    channels = {
        "image": lambda: x,
        "intra": lambda: maps["intra"] * MAP_GAIN["intra"],
        "inter": lambda: (maps["ndm_mean"] - maps["udm_mean"]).abs() * MAP_GAIN["inter"],
        "rec": lambda: rec,
        "image_asymmetry": lambda: _mirror_difference(x) * ASYMMETRY_GAIN,
        "rec_asymmetry": lambda: _mirror_difference(rec),
    }
    unknown = [n for n in names if n not in channels]
    if unknown:
        raise ValueError(f"unknown ASR input channel(s) {unknown}; known: {sorted(channels)}")
    return torch.cat([channels[n]() for n in names], 1)


def _blob(shape: tuple[int, int], centre, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A random smooth-edged blob: an ellipse (random axes, rotation) with a noisy boundary."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    th = rng.uniform(0, np.pi)
    a, b = radius, radius * rng.uniform(0.5, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=max(1.5, radius / 3))
    noise /= noise.std() + 1e-6
    return np.sqrt(u * u + v * v) + 0.25 * noise < 1.0


def synthetic_anomalies(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                        p: float = 0.8, subtle: float = 0.0, edge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a batch (N,S,S) of healthy slices; returns (corrupted images, target masks).

    Each slice gets, with probability ``p``, one or two blobs (radius 2-20 px) inside its brain
    mask, each filled by one of: an intensity shift of +-0.1..0.6, a foreign patch of another
    slice of the batch blended at 0.5..1, or a smooth noise texture around a random level.
    With ``subtle`` > 0, that share of the blobs is instead a low-contrast shift of +-0.04..0.12.
    With ``edge`` > 0, that share of the blobs is centred where anomalies are hardest to tell from
    anatomy: within 8 px of the brain's edge or on dark (< 0.5: CSF- or grey-matter-like) tissue.
    The target is the blob where the image actually changed (|delta| > 0.02).
    """
    x = np.array(images, np.float32, copy=True)
    target = np.zeros(x.shape, bool)
    n, h, w = x.shape
    for i in range(n):
        if rng.random() >= p:
            continue
        inner = binary_erosion(masks[i], iterations=3)
        pts = np.argwhere(inner)
        if len(pts) == 0:
            continue
        hard = np.argwhere((masks[i] & ~binary_erosion(masks[i], iterations=8)) | (inner & (x[i] < 0.5))) if edge else pts
        for _ in range(1 + int(rng.random() < 0.3)):
            near = edge > 0 and len(hard) and rng.random() < edge
            c = hard[rng.integers(len(hard))] if near else pts[rng.integers(len(pts))]
            r = float(np.exp(rng.uniform(np.log(2.0), np.log(20.0))))
            shape = _blob((h, w), c, r, rng) & masks[i]
            if shape.sum() < 4:
                continue
            soft = gaussian_filter(shape.astype(np.float32), sigma=rng.uniform(0.5, 2.0))
            kind = 3 if (subtle > 0 and rng.random() < subtle) else rng.integers(3)
            if kind == 3:  # low-contrast shift
                new = x[i] + rng.uniform(0.04, 0.12) * rng.choice([-1.0, 1.0])
            elif kind == 0:  # intensity shift, darker or brighter
                delta = rng.uniform(0.1, 0.6) * rng.choice([-1.0, 1.0])
                new = x[i] + delta
            elif kind == 1:  # foreign patch: another slice of the batch, shifted
                j = int(rng.integers(n))
                sh = rng.integers(-20, 21, size=2)
                new = np.roll(images[j], tuple(int(s) for s in sh), axis=(0, 1)).astype(np.float32)
                soft = soft * rng.uniform(0.5, 1.0)
            else:  # texture around a random level
                tex = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sigma=rng.uniform(0.7, 3))
                tex /= tex.std() + 1e-6
                new = rng.uniform(0.1, 1.3) + rng.uniform(0.03, 0.2) * tex
            before = x[i].copy()
            x[i] = np.clip((1 - soft) * x[i] + soft * new, 0.0, 1.5)
            target[i] |= shape & (np.abs(x[i] - before) > 0.02)
    x[~masks.astype(bool)] = images[~masks.astype(bool)]
    return x, target


def asr_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE (inside the brain) + soft Dice on the batch."""
    m = mask.float()
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * m).sum() / m.sum().clamp(min=1)
    p = torch.sigmoid(logits) * m
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def init_from(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a trained refiner's ``state`` into ``net``, which may take more input channels:
    weights whose shape differs only in dim 1 (the input channels) are copied into the first
    channels and the extra ones start at zero, so ``net`` starts as the trained refiner."""
    own = net.state_dict()
    for k, v in state.items():
        w = own.get(k)
        if w is None:
            raise ValueError(f"refiner weight {k}: not a weight of this refiner")
        if w.shape == v.shape:
            own[k] = v.clone()
        elif w.dim() == v.dim() and w.shape[0] == v.shape[0] and w.shape[2:] == v.shape[2:] and w.shape[1] > v.shape[1]:
            own[k] = torch.zeros_like(w)
            own[k][:, : v.shape[1]] = v
        else:
            raise ValueError(f"refiner weight {k}: cannot start {tuple(w.shape)} from {tuple(v.shape)}")
    net.load_state_dict(own)


class CorruptedBatches(torch.utils.data.IterableDataset):
    """Endless training batches for the refiner: (corrupted images, brain masks, targets), (B,1,S,S).

    Random healthy batches (``anomaly.training.batches``) corrupted by ``synthetic_anomalies``. In
    the training process (no DataLoader workers) the random stream is seeded by ``seed_key``, as
    before workers existed; each DataLoader worker appends its own id to the key, so ``workers``
    processes produce independent, reproducible streams (the generator is the CPU-bound part of a
    GPU run)."""

    def __init__(self, train, batch_size: int, seed_key: list[int], augment: bool, subtle: float, edge: float):
        super().__init__()
        self.train, self.batch_size, self.seed_key = train, batch_size, list(seed_key)
        self.augment, self.subtle, self.edge = augment, subtle, edge

    def __iter__(self):
        from anomaly.training import batches

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed_key + ([] if info is None else [info.id]))
        for xb, mb in batches(self.train.images, self.train.masks, self.batch_size, rng, self.augment, "cpu"):
            xc, tgt = synthetic_anomalies(xb[:, 0].numpy(), mb[:, 0].numpy().astype(bool), rng,
                                          subtle=self.subtle, edge=self.edge)
            yield torch.from_numpy(xc)[:, None], mb, torch.from_numpy(tgt.astype(np.float32))[:, None]


def fit_refiner(ensemble: torch.nn.Module, train, cfg, work_dir: Path, arch: dict | None = None,
                desc: str = "ddad-asr", subtle: float = 0.0, edge: float = 0.0,
                start: dict[str, torch.Tensor] | None = None, workers: int = 0) -> tuple[torch.nn.Module, dict]:
    """Train the refiner on ``train`` (healthy PreparedSet) with the frozen ``ensemble``
    (from scratch, or from a trained refiner's ``start`` weights; see ``init_from``); ``workers``
    DataLoader processes generate the corrupted batches (0: in this process)."""
    from anomaly.training import TrainLoop, seed_everything

    seed_everything(cfg.seed + 7)
    names = refiner_input_names(arch)
    net = build_refiner(arch)
    if start is not None:
        init_from(net, start)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ensemble.eval()
    loop = TrainLoop(cfg, Path(work_dir), {"asr": net}, {"opt": opt}, desc=desc)
    data = CorruptedBatches(train, cfg.batch_size, [cfg.seed, 7, loop.step], cfg.augment, subtle, edge)
    gen = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers))
    net.train()
    for _ in loop:
        xc, mb, tgt = next(gen)
        x, m, t = xc.to(cfg.device), mb.to(cfg.device), tgt.to(cfg.device)
        with torch.no_grad():
            inp = refiner_inputs(x, ensemble(x), names)
        loss = asr_loss(net(inp), t, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loop.log(loss=float(loss.item()))
    net.eval()
    last = loop.history[-1] if loop.history else {}
    info = {
        "asr_steps": loop.step,
        "asr_final_loss": last.get("loss"),
        "asr_wall_time_s": loop.wall_time_s,
        "asr": {
            "what": (f"self-supervised refinement: MONAI UNet on ({', '.join(names)}) "
                     "-> sigmoid anomaly map, trained on healthy train slices with synthetic anomalies "
                     "(anomaly.methods.ddad.asr.synthetic_anomalies: blobs of intensity shift / foreign patch / "
                     "noise texture; not the cohort's lesion generator), frozen DDAD ensembles"),
            "architecture": {**ASR_ARCH, **(arch or {})},
            "loss": "BCE inside the brain + soft Dice",
            "generator": {"p": 0.8, "subtle_share": subtle, "edge_share": edge},
            "map_gain": MAP_GAIN,
            "steps": loop.step,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
        },
    }
    return net, info


def checkpoint_tensors(ensemble: torch.nn.Module, refiner: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One state dict for a DDAD checkpoint: the ensembles' keys plus the refiner's under ``asr.``."""
    tensors = dict(ensemble.state_dict())
    tensors.update({ASR_PREFIX + k: v for k, v in refiner.state_dict().items()})
    return tensors


def _channels(text: str) -> list[int]:
    """``--channels`` parser: comma-separated UNet widths, at least two, all positive."""
    try:
        widths = [int(c) for c in text.split(",")]
    except ValueError:
        widths = []
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two positive integer widths, e.g. 16,32,64,128")
    return widths


def _workers(text: str) -> int:
    """``--workers`` parser: a count of DataLoader processes, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (generate in the training process) or a positive count")
    return n


def main(argv: list[str] | None = None) -> int:
    """Add an ASR stage to an existing DDAD checkpoint, then re-calibrate and re-validate it."""
    from anomaly.errors import AnomalyError

    p = argparse.ArgumentParser(prog="python -m anomaly.methods.ddad.asr", description=main.__doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained DDAD checkpoint folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="write here (default: in place)")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--subtle-share", type=float, default=0.0,
                   help="share of low-contrast (+-0.04..0.12) synthetic anomalies")
    p.add_argument("--edge-share", type=float, default=0.0,
                   help="share of synthetic anomalies centred near the brain edge or on dark tissue")
    p.add_argument("--asymmetry", action="store_true",
                   help="also feed the refiner left-right mirror differences of the image and the residual")
    p.add_argument("--from-head", action="store_true",
                   help="start from the checkpoint's own ASR head (new input channels zero-initialised) "
                        "instead of from scratch; a fine-tune, usually with a lower --lr")
    p.add_argument("--channels", default=None, type=_channels,
                   help="refiner UNet channels, comma-separated (default %s)" % ",".join(map(str, ASR_ARCH["channels"])))
    p.add_argument("--workers", type=_workers, default=0,
                   help="DataLoader processes generating the synthetic anomalies (0: in the training process)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val_normal")
    a = p.parse_args(argv)
    cmd = " ".join(["python -m anomaly.methods.ddad.asr", *(argv if argv is not None else sys.argv[1:])])
    try:
        card = add_refiner(a, cmd)
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ddad + ASR: {card['validation']}")
    return 0


def add_refiner(a: argparse.Namespace, command: str) -> dict:
    """``main``'s work: train the refiner on the checkpoint's frozen ensembles, save, re-calibrate."""
    from dataclasses import replace

    from anomaly.checkpoints import load_card, save_checkpoint
    from anomaly.errors import CheckpointError
    from anomaly.methods.base import clear_cache, method_class
    from anomaly.methods.ddad.method import FLIP_TTA
    from anomaly.train import load_training_data, train
    from anomaly.training import TrainConfig, device_label, resolve_device, set_threads

    set_threads()
    out = a.out or a.checkpoint
    card = load_card(a.checkpoint)
    if card.get("method") != "ddad":
        raise CheckpointError(f"{a.checkpoint} is not a DDAD checkpoint")
    ens = method_class("ddad")(a.checkpoint).net  # the checkpoint's ensembles (hash-checked), any ASR head dropped
    cfg = TrainConfig(seed=a.seed, minutes=a.minutes, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      resume=a.resume, device=resolve_device(a.device), data_dir=str(a.data))
    ens.to(cfg.device)
    train_set, _, _ = load_training_data(a.data, a.train_split, a.val_split)
    arch = {"inputs": list(BASE_INPUTS + ASYMMETRY_INPUTS)} if a.asymmetry else None
    if a.channels:
        arch = {**(arch or {}), "channels": a.channels, "strides": [2] * (len(a.channels) - 1)}
    start = None
    if a.from_head:
        from anomaly.checkpoints import load_weights

        start = {k[len(ASR_PREFIX):]: v for k, v in load_weights(a.checkpoint).items() if k.startswith(ASR_PREFIX)}
        if not start:
            raise CheckpointError(f"{a.checkpoint} has no ASR head to start from (--from-head)")
        if arch is None:  # keep the head's own architecture (inputs, widths), as its card records it
            arch = dict(card.get("asr", {}).get("architecture") or {})
    try:
        net, info = fit_refiner(ens, train_set, cfg, Path(out) / "work_asr", arch=arch, subtle=a.subtle_share,
                                edge=a.edge_share, start=start, workers=a.workers)
    except ValueError as e:  # a head that does not fit the requested inputs
        raise CheckpointError(f"{a.checkpoint}: {e}") from e
    if start is not None:
        info["asr_started_from"] = {"checkpoint_hash": card.get("checkpoint_hash"), "asr_steps": card.get("asr_steps"),
                                    "validation": card.get("validation")}
    new = {k: v for k, v in card.items() if k not in ("calibration", "validation", "checkpoint_hash", "weights")}
    new.update(info)
    if card.get("validation"):
        new["validation_before_asr"] = card["validation"]
    new["score"] = {**card.get("score", {}), "map": "asr", "flip_tta": FLIP_TTA}
    new["maps"] = {**card.get("maps", {}), "residual": "ASR-refined anomaly map (sigmoid of the refiner)",
                   "inter_discrepancy": "|mean NDM - mean UDM| (A_inter; the residual before ASR)"}
    new["asr_command"] = command
    new["asr_trained_on"] = device_label(cfg.device)
    Path(out).mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, checkpoint_tensors(ens, net), new)
    clear_cache()
    return train("ddad", a.data, out, replace(cfg, device="cpu"), train_split=a.train_split, val_split=a.val_split,
                 calibrate_only=True)


if __name__ == "__main__":
    raise SystemExit(main())
