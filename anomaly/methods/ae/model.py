"""The torch module of the AE: MONAI's AutoEncoder with a narrow spatial bottleneck."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoEncoder

DEFAULT_ARCH = {"channels": [32, 64, 128, 128, 16], "strides": [2, 2, 2, 2, 2], "num_res_units": 1}


def build_autoencoder(arch: dict | None = None) -> torch.nn.Module:
    """128x128 -> 4x4x16 latent (256 numbers) -> 128x128; sigmoid-free, linear output."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    return AutoEncoder(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(a["channels"]),
        strides=tuple(a["strides"]),
        num_res_units=int(a["num_res_units"]),
        norm="batch",
    )
