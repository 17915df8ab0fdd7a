"""The torch module of the DAE: a MONAI 2D UNet (128 -> 16x16x256 bottom -> 128)."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

# num_res_units=1 (3.3 MB): ~0.55-0.7x the time of num_res_units=2 (6.4 MB, ~40 CPU-ms per slice
# at batch 32 on 2 threads, too close to the 25 ms/slice budget on 2 shared cores).
DEFAULT_ARCH = {"channels": [32, 64, 128, 256], "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"}


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
