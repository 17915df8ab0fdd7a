"""f-AnoGAN (Schlegl et al., MedIA 2019): WGAN-GP, then an izi_f encoder; score = image + kappa x feature residual."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from anomaly.methods.base import AnomalyMethod, MethodOutput, register
from anomaly.methods.fanogan.model import DEFAULT_ARCH, FAnoGAN

GAN_SHARE = 0.7  # share of the time (and step) budget for the WGAN-GP phase; the rest trains E
N_CRITIC = 5
GP_LAMBDA = 10.0
GAN_LR = 2e-4  # twice the WGAN-GP default: the CPU budget allows only ~1-2k generator updates
GAN_BETAS = (0.5, 0.9)
ENC_LR = 1e-4
ENC_BETAS = (0.5, 0.999)
KAPPA = 1.0  # weight of the critic-feature residual, in training (izi_f) and in the score


def _torch_gen(seed: int, phase: int, step: int) -> torch.Generator:
    """Per-step random stream (z, interpolation weights): identical after --resume."""
    s = np.random.SeedSequence([int(seed), phase, int(step)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)


@register
class FAnoGANMethod(AnomalyMethod):
    name = "fanogan"
    title = "f-AnoGAN (WGAN-GP + izi_f encoder)"
    paper = ("Schlegl et al., f-AnoGAN: Fast unsupervised anomaly detection with generative adversarial "
             "networks, MedIA 2019")
    citation = ("Schlegl T, Seeboeck P, Waldstein SM, Langs G, Schmidt-Erfurth U. f-AnoGAN: Fast unsupervised "
                "anomaly detection with generative adversarial networks. Medical Image Analysis 54 (2019) 30-44.")

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.net = FAnoGAN(self.card.get("architecture", DEFAULT_ARCH))
        self.net.load_state_dict(load_weights(self.checkpoint_dir))
        self.net.eval()
        self.kappa = float(self.card.get("hyper_parameters", {}).get("kappa", KAPPA))

    @torch.no_grad()
    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        net = self.net
        xi = net.to_internal(x)
        g = net.G(net.E(xi))
        img_res = ((xi - g) ** 2).flatten(1).mean(1)
        feat_res = ((net.D.features(xi) - net.D.features(g)) ** 2).mean(1)
        score = (img_res + self.kappa * feat_res).numpy().astype(np.float64)
        rec = net.to_output(g, x.shape[-1])[:, 0].numpy()
        m = np.asarray(masks, np.float32)
        return MethodOutput(pseudo_healthy=rec * m, residual=np.abs(np.asarray(images, np.float32) - rec) * m,
                            image_score=score)

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        import torch.nn.functional as F

        from anomaly.training import TrainLoop, batches, seed_everything

        seed_everything(cfg.seed)
        arch = dict(DEFAULT_ARCH)
        net = FAnoGAN(arch)
        G, D, E = net.G, net.D, net.E
        work = Path(out_dir) / "work"
        b, latent = cfg.batch_size, int(arch["latent"])

        # (a) WGAN-GP: n_critic critic updates per generator update; one loop step = one G update.
        gan_steps = max(1, int(cfg.max_steps * GAN_SHARE))
        cfg_gan = replace(cfg, minutes=cfg.minutes * GAN_SHARE, max_steps=gan_steps)
        opt_g = torch.optim.Adam(G.parameters(), lr=GAN_LR, betas=GAN_BETAS)
        opt_d = torch.optim.Adam(D.parameters(), lr=GAN_LR, betas=GAN_BETAS)
        loop = TrainLoop(cfg_gan, work / "gan", {"G": G, "D": D}, {"opt_g": opt_g, "opt_d": opt_d}, desc="fanogan gan")
        gen = batches(train.images, train.masks, b, np.random.default_rng([cfg.seed, 0, loop.step]), cfg.augment, cfg.device)
        G.train(); D.train()
        for step in loop:
            tg = _torch_gen(cfg.seed, 0, step)
            for _ in range(N_CRITIC):
                real = net.to_internal(next(gen)[0])
                n = len(real)
                with torch.no_grad():
                    fake = G(torch.rand(n, latent, generator=tg).to(real.device) * 2 - 1)
                a = torch.rand(n, 1, 1, 1, generator=tg).to(real.device)
                mix = (a * real + (1 - a) * fake).requires_grad_(True)
                grad = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)[0]
                gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
                w_dist = D(real).mean() - D(fake).mean()
                loss_d = -w_dist + GP_LAMBDA * gp
                opt_d.zero_grad()
                loss_d.backward()
                opt_d.step()
            D.requires_grad_(False)
            loss_g = -D(G(torch.rand(b, latent, generator=tg).to(real.device) * 2 - 1)).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            loop.log(w=w_dist.item(), gp=gp.item(), g=loss_g.item())
        gan_hist = loop.history[-1] if loop.history else {}
        gan_done, gan_wall = loop.step, loop.wall_time_s

        # (b) izi_f encoder with G and D frozen: ||x - G(E(x))||^2 + kappa ||f(x) - f(G(E(x)))||^2.
        G.eval(); D.eval()
        G.requires_grad_(False); D.requires_grad_(False)
        spare = max(0.0, cfg.minutes * GAN_SHARE - gan_wall / 60)
        cfg_enc = replace(cfg, minutes=cfg.minutes * (1 - GAN_SHARE) + spare,
                          max_steps=max(1, cfg.max_steps - gan_steps))
        opt_e = torch.optim.Adam(E.parameters(), lr=ENC_LR, betas=ENC_BETAS)
        eloop = TrainLoop(cfg_enc, work / "encoder", {"E": E}, {"opt_e": opt_e}, desc="fanogan encoder")
        gen = batches(train.images, train.masks, b, np.random.default_rng([cfg.seed, 1, eloop.step]), cfg.augment, cfg.device)
        E.train()
        for _ in eloop:
            x = net.to_internal(next(gen)[0])
            g = G(E(x))
            l_img = F.mse_loss(g, x)
            l_feat = F.mse_loss(D.features(g), D.features(x))
            loss = l_img + KAPPA * l_feat
            opt_e.zero_grad()
            loss.backward()
            opt_e.step()
            eloop.log(loss=loss.item(), img=l_img.item(), feat=l_feat.item())
        net.eval()
        enc_hist = eloop.history[-1] if eloop.history else {}
        card = {
            "architecture": arch,
            "internal_resolution": (f"{arch['size']}x{arch['size']}: model-space 128x128 slices are area-downsampled "
                                    "for G/D/E (a GAN at 128 does not train to a usable generator in the CPU budget); "
                                    "G(E(x)) is bilinearly upsampled back to 128 for the residual map"),
            "hyper_parameters": {"wgan_gp_lambda": GP_LAMBDA, "n_critic": N_CRITIC, "gan_lr": GAN_LR,
                                 "gan_betas": list(GAN_BETAS), "encoder_lr": ENC_LR, "encoder_betas": list(ENC_BETAS),
                                 "kappa": KAPPA, "batch_size": b, "gan_time_share": GAN_SHARE,
                                 "z_prior": "U(-1, 1)", "intensity_map": "[0, 1.5] -> [-1, 1]",
                                 "critic_features": "penultimate layer (flattened last conv block)"},
            "score": "image_score = mean (x - G(E(x)))^2 + kappa * mean (f(x) - f(G(E(x))))^2 at the internal size",
            "maps": {"residual": "|x - G(E(x))| at 128 (x brain mask)", "pseudo_healthy": "G(E(x)) x brain mask"},
            "gan_steps": gan_done,
            "encoder_steps": eloop.step,
            "train_steps": gan_done + eloop.step,
            "gan_wall_time_s": gan_wall,
            "encoder_wall_time_s": eloop.wall_time_s,
            "wall_time_s": gan_wall + eloop.wall_time_s,
            "final_gan": gan_hist,
            "final_encoder": enc_hist,
        }
        return dict(net.state_dict()), card
