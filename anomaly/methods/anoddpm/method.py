"""AnoDDPM: partial diffusion with simplex noise, denoised back to a pseudo-healthy slice.

Wyatt et al., AnoDDPM: Anomaly detection with denoising diffusion probabilistic models
using simplex noise, CVPR Workshops 2022. The DDPM (MONAI ``DiffusionModelUNet``, epsilon
prediction, MSE) is trained on healthy slices with multi-octave simplex noise. At test time
a slice is noised to an intermediate step ``t_start`` (AnoDDPM's lambda) and denoised back
with a short deterministic DDIM schedule (<= 20 steps, MONAI ``DDIMScheduler``); the model
"repairs" anomalies into healthy-looking tissue. Several noise draws (``n_samples``) are
averaged: residual = |x - mean estimate|, ``uncertainty`` = their standard deviation.
Optional THOR-style implicit guidance (Bercea et al., MICCAI 2024), see ``model.py``.

Resolution: the diffusion model runs at 64 x 64 (CPU budget); the healthy estimate at
128 x 128 is ``x - upsample(down(x) - x0_hat_64)`` (input detail kept, model changes added).

Determinism: sample k of a call with ``seed`` uses noise drawn from
``torch.Generator().manual_seed(seed * 1_000_003 + k)``, the same pattern for every slice
of the batch, so a slice's result depends only on (slice, seed), not on its batch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.methods.anoddpm.model import (
    DEFAULT_ARCH,
    DEFAULT_DIFFUSION,
    DEFAULT_INFERENCE,
    INTENSITY_MAX,
    MODEL_RES,
    build_ddim,
    build_ddpm,
    build_unet,
    from_model,
    partial_noise_denoise,
    to_model,
)
from anomaly.methods.anoddpm.noise import make_noise
from anomaly.methods.base import AnomalyMethod, MethodOutput, register

EMA_DECAY = 0.999


def _noise_kw(diffusion: dict, kind: str) -> dict:
    return dict(diffusion.get("simplex", {})) if kind == "simplex" else {}


@register
class AnoDDPM(AnomalyMethod):
    name = "anoddpm"
    title = "AnoDDPM (simplex-noise diffusion)"
    extra_map_titles = {"uncertainty": "uncertainty (draw spread)"}
    paper = "Wyatt et al., AnoDDPM: Anomaly Detection with Denoising Diffusion Probabilistic Models using Simplex Noise, CVPR Workshops 2022"
    citation = ("Wyatt J, Leach A, Schmon SM, Willcocks CG. AnoDDPM: Anomaly Detection With Denoising "
                "Diffusion Probabilistic Models Using Simplex Noise. Proceedings of the IEEE/CVF Conference on "
                "Computer Vision and Pattern Recognition (CVPR) Workshops, 2022, pp. 650-656.")
    stochastic = True
    on_demand = True

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.arch = {**DEFAULT_ARCH, **self.card.get("architecture", {})}
        self.diffusion = {**DEFAULT_DIFFUSION, **self.card.get("diffusion", {})}
        self.inference = {**DEFAULT_INFERENCE, **self.card.get("inference", {})}
        self.net = build_unet(self.arch)
        self.net.load_state_dict(load_weights(self.checkpoint_dir))
        self.net.eval()
        self.scheduler = build_ddim(self.diffusion)

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, seed: int = 0, **overrides) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) -> per-sample healthy estimates (K, N, S, S) at the input's size, and the
        64 x 64 model-space estimates (K, N, 64, 64). ``overrides`` replace inference settings."""
        p = {**self.inference, **overrides}
        k_samples, noise = int(p["n_samples"]), str(p["noise"])
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        n, s = x.shape[0], x.shape[-1]
        xm = to_model(x)
        eps = torch.cat([
            make_noise(noise, (1, 1, MODEL_RES, MODEL_RES), torch.Generator().manual_seed(int(seed) * 1_000_003 + k),
                       **_noise_kw(self.diffusion, noise)).expand(n, -1, -1, -1)
            for k in range(k_samples)])
        xk = xm.repeat(k_samples, 1, 1, 1)
        x0 = partial_noise_denoise(self.net, xk, int(p["t_start"]), int(p["n_steps"]), noise=noise,
                                   guidance=float(p["guidance"]), scheduler=self.scheduler, eps=eps)
        diff = from_model(xk) - from_model(x0)  # what the model changed, at 64 x 64
        if s != MODEL_RES:
            diff = F.interpolate(diff, size=(s, s), mode="bilinear", align_corners=False)
        est = (x.repeat(k_samples, 1, 1, 1) - diff).clamp(0.0, INTENSITY_MAX)
        return est.view(k_samples, n, s, s).numpy(), from_model(x0).view(k_samples, n, MODEL_RES, MODEL_RES).numpy()

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        images = np.asarray(images, np.float32)
        m = np.asarray(masks, np.float32)
        est, _ = self.reconstruct(images, seed)
        ph = est.mean(0) * m
        unc = est.std(0) * m if len(est) > 1 else np.zeros_like(ph)
        return MethodOutput(pseudo_healthy=ph.astype(np.float32), residual=np.abs(images - ph).astype(np.float32),
                            extra_maps={"uncertainty": unc.astype(np.float32)})

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        from anomaly.training import TrainLoop, batches, seed_everything

        seed_everything(cfg.seed)
        arch, diffusion = dict(DEFAULT_ARCH), dict(DEFAULT_DIFFUSION)
        net = build_unet(arch)
        ema = copy.deepcopy(net).requires_grad_(False)
        ddpm = build_ddpm(diffusion)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        loop = TrainLoop(cfg, out_dir / "work", {"net": net, "ema": ema}, {"opt": opt}, desc="anoddpm")
        gen = batches(train.images, train.masks, cfg.batch_size, np.random.default_rng(cfg.seed + loop.step), cfg.augment,
                      cfg.device)
        tg = torch.Generator().manual_seed(cfg.seed * 1_000_003 + loop.step)
        t_max = int(diffusion["t_train_max"])
        kind = diffusion["train_noise"]
        net.train()
        for step in loop:
            x, _ = next(gen)
            x0 = to_model(x)
            noise = make_noise(kind, tuple(x0.shape), tg, **_noise_kw(diffusion, kind)).to(x0.device)
            t = torch.randint(0, t_max, (x0.shape[0],), generator=tg).to(x0.device)
            pred = net(ddpm.add_noise(x0, noise, t), t)
            loss = F.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            decay = min(EMA_DECAY, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - decay)
                for be, b in zip(ema.buffers(), net.buffers()):
                    be.copy_(b)
            loop.log(loss=loss.item())
        losses = [h["loss"] for h in loop.history[-100:]]
        return dict(ema.state_dict()), {
            "architecture": arch,
            "diffusion": diffusion,
            "inference": dict(DEFAULT_INFERENCE),
            "model_resolution": MODEL_RES,
            "ema_decay": EMA_DECAY,
            "train_steps": loop.step,
            "final_loss": losses[-1] if losses else None,  # the last step's, as every method's card
            # a diffusion loss varies with each step's random time steps: its recent mean says more
            "final_loss_mean_last_100": float(np.mean(losses)) if losses else None,
            "wall_time_s": loop.wall_time_s,
        }
