"""The torch modules of DDAD: two ensembles of K compact MONAI autoencoders.

NDM ("normative distribution module"): K autoencoders trained on healthy slices only.
UDM ("unknown distribution module"): K autoencoders trained on healthy + unlabeled slices
(a normal/lesion mixture). Both work at ``arch["size"]`` internally (area-downsampled input,
bilinear-upsampled output); the discrepancy maps are returned at the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoEncoder

DEFAULT_ARCH = {
    "k": 3,  # ensemble members per module
    "size": 64,  # internal resolution, as in the paper (64x64): 6 networks must train on 2 CPU cores
    "channels": [16, 32, 64, 64, 16],
    "strides": [2, 2, 2, 2, 1],  # 64 -> 4x4x16 bottleneck (256 numbers)
    "num_res_units": 1,
}


def build_member(arch: dict) -> torch.nn.Module:
    """One compact MONAI AutoEncoder (size -> size/16 x 16-channel bottleneck -> size)."""
    return AutoEncoder(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(arch["channels"]),
        strides=tuple(arch["strides"]),
        num_res_units=int(arch["num_res_units"]),
        norm="batch",
    )


class DualEnsemble(torch.nn.Module):
    """``ndm0..ndm{K-1}`` and ``udm0..udm{K-1}`` autoencoders (state-dict prefixes as named)."""

    def __init__(self, arch: dict | None = None, seed: int = 0):
        super().__init__()
        self.arch = {**DEFAULT_ARCH, **(arch or {})}
        k = int(self.arch["k"])
        self.k = k
        for j, name in enumerate(self.names("ndm") + self.names("udm")):
            torch.manual_seed(int(seed) * 1000 + j)  # a different initialisation per member
            self.add_module(name, build_member(self.arch))

    def member(self, name: str) -> torch.nn.Module:
        return getattr(self, name)

    def names(self, module: str) -> list[str]:
        return [f"{module}{i}" for i in range(self.k)]

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        s = int(self.arch["size"])
        return x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="area")

    def to_output(self, y: torch.Tensor, size: int) -> torch.Tensor:
        return y if y.shape[-1] == size else F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)

    def reconstruct(self, x: torch.Tensor, module: str) -> torch.Tensor:
        """(K, N, 1, s, s) reconstructions of the K members of ``module`` at internal size."""
        xi = self.to_internal(x)
        return torch.stack([self.member(n)(xi) for n in self.names(module)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, 1, S, S) -> NDM mean, NDM std (intra), UDM mean, all (N, 1, S, S)."""
        s = x.shape[-1]
        rn = self.reconstruct(x, "ndm")
        ru = self.reconstruct(x, "udm")
        mu_n, mu_u = rn.mean(0), ru.mean(0)
        intra = rn.std(0, unbiased=False)
        return {"ndm_mean": self.to_output(mu_n, s), "udm_mean": self.to_output(mu_u, s),
                "intra": self.to_output(intra, s)}
