"""Pixel-wise normative z-score: the baseline of normative modelling."""

from __future__ import annotations

import numpy as np
import torch

from anomaly.methods.base import AnomalyMethod, MethodOutput, register

EPS = 0.05  # floor on the std so that the background and thin structures don't explode


@register
class ZScore(AnomalyMethod):
    """|x - mean| / std of healthy training slices after the shared preprocessing.

    Pseudo-healthy image = the mean healthy slice."""

    name = "zscore"
    trains_networks = False
    title = "Normative z-score (baseline)"
    paper = "Pixel-wise normative modelling baseline (e.g. Marquand et al., Biol. Psychiatry CNNI 2016)"
    citation = "Marquand AF, et al. Understanding heterogeneity in clinical cohorts using normative models. Biol Psychiatry Cogn Neurosci Neuroimaging 2016;1(5):433-447."

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        w = load_weights(self.checkpoint_dir)
        self.mean = w["mean"].numpy()
        self.std = w["std"].numpy()

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        x = np.asarray(images, np.float32)
        mean = np.broadcast_to(self.mean, x.shape)
        z = np.abs(x - mean) / np.maximum(self.std, EPS)
        return MethodOutput(pseudo_healthy=np.array(mean), residual=z)

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        x = train.images.astype(np.float64)
        mean = x.mean(0).astype(np.float32)
        std = x.std(0).astype(np.float32)
        tensors = {"mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
        return tensors, {"architecture": {"eps": EPS}, "train_steps": 1}
