"""VAE method: residual |x - D(mu(x))| of the mean reconstruction.

Baur et al., MedIA 2021 (comparative study; the "VAE" baseline) after Kingma & Welling, ICLR 2014.
Training loss (inside the brain mask) = L1 + 0.1 * MSE reconstruction of a sampled latent
+ beta * KL, with KL averaged over the latent dimensions and beta ramped linearly from 0
over the first ``kl_warmup_steps`` steps (avoids posterior collapse early on).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.methods.base import AnomalyMethod, MethodOutput, register
from anomaly.methods.vae.model import DEFAULT_ARCH, build_vae, kl_divergence, mean_reconstruction

# beta multiplies the KL averaged over the 128 latent dims; recon is a per-pixel mean, so
# beta = 5e-3 corresponds to ~0.04 nats-per-latent-dim vs L1 per pixel, i.e. a weakly
# regularised VAE (a beta of ~0.6 in sum-over-pixels / sum-over-latents units).
DEFAULT_HPARAMS = {"beta": 5e-3, "kl_warmup_steps": 500, "recon_loss": "l1+0.1mse"}


def hparams() -> dict:
    """Defaults, overridable by ``ANOMALY_VAE_BETA`` / ``ANOMALY_VAE_KL_WARMUP`` (recorded in the card)."""
    hp = dict(DEFAULT_HPARAMS)
    if os.environ.get("ANOMALY_VAE_BETA"):
        hp["beta"] = float(os.environ["ANOMALY_VAE_BETA"])
    if os.environ.get("ANOMALY_VAE_KL_WARMUP"):
        hp["kl_warmup_steps"] = int(os.environ["ANOMALY_VAE_KL_WARMUP"])
    return hp


@register
class VAE(AnomalyMethod):
    name = "vae"
    title = "Variational autoencoder"
    paper = "Baur et al., Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative study, MedIA 2021 (VAE: Kingma & Welling, ICLR 2014)"
    citation = ("Baur C, Denner S, Wiestler B, Navab N, Albarqouni S. Autoencoders for unsupervised anomaly "
                "segmentation in brain MR images: A comparative study. Medical Image Analysis 69 (2021) 101952. "
                "Kingma DP, Welling M. Auto-Encoding Variational Bayes. ICLR 2014.")

    channels_last = False  # MONAI's VarAutoEncoder flattens its conv output with view()

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.net = build_vae(self.card.get("architecture", DEFAULT_ARCH))
        self.net.load_state_dict(load_weights(self.checkpoint_dir))
        self.net.eval()

    @torch.no_grad()
    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        rec = mean_reconstruction(self.net, x)[:, 0].numpy() * np.asarray(masks, np.float32)
        return MethodOutput(pseudo_healthy=rec, residual=np.abs(np.asarray(images, np.float32) - rec))

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        from anomaly.training import TrainLoop, batches, seed_everything

        hp = hparams()
        seed_everything(cfg.seed)
        net = build_vae()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        loop = TrainLoop(cfg, out_dir / "work", {"net": net}, {"opt": opt}, desc="vae")
        rng = np.random.default_rng(cfg.seed + loop.step)
        gen = batches(train.images, train.masks, cfg.batch_size, rng, cfg.augment, cfg.device)
        # the reparameterisation noise: seeded per (seed, start step) so runs and resumes are reproducible
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + loop.step)
        net.train()
        for step in loop:
            x, m = next(gen)
            mf = m.float()
            mu, logvar = net.encode_forward(x)
            std = torch.exp(0.5 * logvar)
            z = mu + torch.randn(std.shape, generator=g).to(std.device) * std
            rec = net.decode_forward(z, use_sigmoid=False)
            recon = F.l1_loss(rec * mf, x * mf) + 0.1 * F.mse_loss(rec * mf, x * mf)
            kl = kl_divergence(mu, logvar).mean()
            beta = hp["beta"] * min(1.0, (step + 1) / max(1, hp["kl_warmup_steps"]))
            loss = recon + beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            loop.log(loss=loss.item(), recon=recon.item(), kl=kl.item())
        net.eval()
        last = loop.history[-1] if loop.history else {}
        return dict(net.state_dict()), {
            "architecture": DEFAULT_ARCH,
            "hyper_parameters": {**hp, "kl": "0.5*(mu^2+exp(logvar)-1-logvar) averaged over latent dims",
                                 "test_time": "mean reconstruction D(mu), no sampling"},
            "train_steps": loop.step,
            "final_loss": last.get("loss"),
            "final_recon": last.get("recon"),
            "final_kl": last.get("kl"),
            "wall_time_s": loop.wall_time_s,
        }
