"""AE method: residual |x - AE(x)| (Baur et al., MedIA 2021 comparative study)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.methods.ae.model import DEFAULT_ARCH, build_autoencoder
from anomaly.methods.base import AnomalyMethod, MethodOutput, register


@register
class ConvAE(AnomalyMethod):
    name = "ae"
    title = "Convolutional autoencoder"
    paper = "Baur et al., Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative study, MedIA 2021"
    citation = "Baur C, Denner S, Wiestler B, Navab N, Albarqouni S. Autoencoders for unsupervised anomaly segmentation in brain MR images: A comparative study. Medical Image Analysis 69 (2021) 101952."

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.net = build_autoencoder(self.card.get("architecture", DEFAULT_ARCH))
        self.net.load_state_dict(load_weights(self.checkpoint_dir))
        self.net.eval()

    @torch.no_grad()
    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        rec = self.net(x)[:, 0].numpy() * np.asarray(masks, np.float32)
        return MethodOutput(pseudo_healthy=rec, residual=np.abs(images - rec))

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
