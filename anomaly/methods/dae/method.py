"""DAE method: a UNet trained to remove coarse noise from healthy slices; residual |x - UNet(x)|.

Kascenas A, Sanchez P, Schrempf P, Wang C, Clackett W, Mikhael SS, Voisey JP, Goatman K,
Weir A, Pugeault N, Tsaftaris SA, O'Neil AQ. The role of noise in denoising models for anomaly
detection in medical images. Medical Image Analysis 90 (2023) 102963.

Training: x + coarse_noise(mask; noise_res, noise_std) -> UNet -> MSE against x inside the
brain mask. Test time: the clean input is "denoised"; anomalies (which look like structured,
low-frequency intensity changes) are partly removed, healthy tissue is kept.
``noise_res`` / ``noise_std`` are hyper-parameters (card fields); override them with
``ANOMALY_DAE_NOISE_RES`` / ``ANOMALY_DAE_NOISE_STD`` or compare settings on ``val_lesion``
with ``python -m anomaly.methods.dae.tune`` (never on test).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from anomaly.methods.base import ReconstructionMethod, register
from anomaly.methods.dae.model import DEFAULT_ARCH, build_unet
from anomaly.methods.dae.noise import coarse_noise

# Noise tuning (python -m anomaly.methods.dae.tune, data/cohort val_lesion pixel AP, never test).
# Session 3, idle CPU, 17-minute runs of 1 thread (~940 steps each, seed 0), a 2 x 2 grid:
#   res 8 / std 0.2 -> 0.012 (image AUROC 0.42) | res 8 / std 0.4 -> 0.016 (0.49)
#   res 16 / std 0.2 -> 0.046 (0.43)             | res 16 / std 0.4 -> 0.049 (0.43)
# -> the paper's 16 x 16 grid is 3-4x better than 8 x 8 at equal budget; std 0.4 ties with 0.2.
# (Session 1's 59-78-step runs ranked res 8 first: too short to mean anything.)
# A 16-minute 2-thread CPU run at res 16 / std 0.4 (~1.65k steps) reached val pixel AP 0.045, below
# the then shipped GPU model's 0.050 (res 8, 15.4k steps). Session 4 resumed that run to the
# issue's full 45-minute CPU budget (3.3k steps): val pixel AP 0.066, image AUROC 0.53, above the
# GPU res-8 model (0.050 / 0.52), so it is the shipped checkpoint and res 16 / std 0.4 the default.
DEFAULT_HPARAMS = {"noise_res": 16, "noise_std": 0.4, "loss": "mse"}


def hparams() -> dict:
    """Defaults, overridden by ``ANOMALY_DAE_NOISE_RES`` / ``ANOMALY_DAE_NOISE_STD`` when set."""
    hp = dict(DEFAULT_HPARAMS)
    if os.environ.get("ANOMALY_DAE_NOISE_RES"):
        hp["noise_res"] = int(os.environ["ANOMALY_DAE_NOISE_RES"])
    if os.environ.get("ANOMALY_DAE_NOISE_STD"):
        hp["noise_std"] = float(os.environ["ANOMALY_DAE_NOISE_STD"])
    return hp


@register
class DenoisingAE(ReconstructionMethod):
    name = "dae"
    title = "Denoising autoencoder (coarse noise)"
    paper = "Kascenas et al., The role of noise in denoising models for anomaly detection in medical images, MedIA 2023"
    citation = ("Kascenas A, Sanchez P, Schrempf P, Wang C, Clackett W, Mikhael SS, Voisey JP, Goatman K, Weir A, "
                "Pugeault N, Tsaftaris SA, O'Neil AQ. The role of noise in denoising models for anomaly detection "
                "in medical images. Medical Image Analysis 90 (2023) 102963.")

    default_arch = DEFAULT_ARCH
    build_net = staticmethod(build_unet)

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        from anomaly.training import TrainLoop, batches, seed_everything

        hp = hparams()
        seed_everything(cfg.seed)
        net = build_unet()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        loop = TrainLoop(cfg, out_dir / "work", {"net": net}, {"opt": opt}, desc="dae")
        gen = batches(train.images, train.masks, cfg.batch_size, np.random.default_rng(cfg.seed + loop.step), cfg.augment,
                      cfg.device)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + loop.step)  # noise stream, reproducible on resume
        net.train()
        for _ in loop:
            x, m = next(gen)
            mf = m.float()
            noisy = x + coarse_noise(m.cpu(), hp["noise_res"], hp["noise_std"], generator=g).to(x.device)
            out = net(noisy)
            if hp["loss"] == "l1":
                loss = (torch.abs(out - x) * mf).sum() / mf.sum().clamp_min(1)
            else:
                loss = ((out - x) ** 2 * mf).sum() / mf.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loop.log(loss=loss.item())
        net.eval()
        return dict(net.state_dict()), {
            "architecture": DEFAULT_ARCH,
            "hyper_parameters": {**hp, "noise": "N(0, noise_std) on a noise_res^2 grid, bilinear upsampled, "
                                 "random shift, brain mask only", "loss_region": "brain mask",
                                 "test_time": "residual |x - UNet(x)| of the clean input"},
            "noise_res": hp["noise_res"],
            "noise_std": hp["noise_std"],
            "train_steps": loop.step,
            "final_loss": loop.history[-1]["loss"] if loop.history else None,
            "wall_time_s": loop.wall_time_s,
        }
