"""AE method: residual |x - AE(x)| (Baur et al., MedIA 2021 comparative study)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.methods.ae.model import DEFAULT_ARCH, build_autoencoder
from anomaly.methods.base import ReconstructionMethod, register


@register
class ConvAE(ReconstructionMethod):
    name = "ae"
    title = "Convolutional autoencoder"
    paper = "Baur et al., Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative study, MedIA 2021"
    citation = "Baur C, Denner S, Wiestler B, Navab N, Albarqouni S. Autoencoders for unsupervised anomaly segmentation in brain MR images: A comparative study. Medical Image Analysis 69 (2021) 101952."

    default_arch = DEFAULT_ARCH
    build_net = staticmethod(build_autoencoder)

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        from anomaly.training import TrainLoop, batches, seed_everything

        seed_everything(cfg.seed)
        net = build_autoencoder()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        loop = TrainLoop(cfg, out_dir / "work", {"net": net}, {"opt": opt}, desc="ae")
        gen = batches(train.images, train.masks, cfg.batch_size, np.random.default_rng(cfg.seed + loop.step), cfg.augment,
                      cfg.device)
        net.train()
        for _ in loop:
            x, m = next(gen)
            rec = net(x)
            loss = F.l1_loss(rec * m, x * m) + 0.1 * F.mse_loss(rec * m, x * m)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loop.log(loss=loss.item())
        net.eval()
        return dict(net.state_dict()), {"architecture": DEFAULT_ARCH, "train_steps": loop.step,
                                          "final_loss": loop.history[-1]["loss"] if loop.history else None,
                                          "wall_time_s": loop.wall_time_s}
