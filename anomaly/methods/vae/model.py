"""The torch module of the VAE: MONAI's VarAutoEncoder with a dense 128-d latent."""

from __future__ import annotations

import torch
from monai.networks.nets import VarAutoEncoder

# 128x128 -> 4 stride-2 convs -> 8x8x128 -> dense -> 128-d latent (mu, logvar) -> dense -> mirror.
# num_res_units=0 keeps the checkpoint at ~14.5 MB: the three dense layers (8192 x 128) hold
# 3.1 M of its 3.6 M parameters; one residual unit per level would take it to 16.3 MB.
DEFAULT_ARCH = {
    "in_shape": [1, 128, 128],
    "latent_size": 128,
    "channels": [32, 64, 128, 128],
    "strides": [2, 2, 2, 2],
    "num_res_units": 0,
    "norm": "batch",
}


def build_vae(arch: dict | None = None) -> VarAutoEncoder:
    """Linear output (no sigmoid: intensities go up to 1.5)."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    return VarAutoEncoder(
        spatial_dims=2,
        in_shape=tuple(a["in_shape"]),
        out_channels=1,
        latent_size=int(a["latent_size"]),
        channels=tuple(a["channels"]),
        strides=tuple(a["strides"]),
        num_res_units=int(a["num_res_units"]),
        norm=a["norm"],
        use_sigmoid=False,
    )


def mean_reconstruction(net: VarAutoEncoder, x: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean (no sampling): the deterministic test-time reconstruction."""
    mu, _ = net.encode_forward(x)
    return net.decode_forward(mu, use_sigmoid=False)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, averaged over the latent dimensions: (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=1)
