"""The torch module of the DAE: a MONAI 2D UNet (128 -> 16x16x256 bottom -> 128)."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

DEFAULT_ARCH = {"channels": [32, 64, 128, 256], "strides": [2, 2, 2], "num_res_units": 2, "norm": "batch"}


def build_unet(arch: dict | None = None) -> torch.nn.Module:
    """1 -> 1 channel UNet with a linear output (intensities go up to 1.5)."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(a["channels"]),
        strides=tuple(a["strides"]),
        num_res_units=int(a["num_res_units"]),
        norm=a["norm"],
    )
