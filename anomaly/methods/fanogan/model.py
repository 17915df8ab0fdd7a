"""The torch modules of f-AnoGAN: a DCGAN-style WGAN-GP generator and critic, and the izi_f encoder.

All three work at ``arch["size"]`` (64 by default: 128x128 model-space slices are
area-downsampled for the networks and the generator's output is bilinearly upsampled back),
on intensities mapped from the project's [0, 1.5] range to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_ARCH = {
    "size": 64,  # internal resolution of G, D and E
    "latent": 128,  # z ~ U(-1, 1)^128, the encoder ends in tanh
    "width": 16,  # G: 8w-4w-2w-w feature maps (4x4 -> 64x64); D and E: w-2w-4w-8w
    "critic_norm": "layer",  # layer norm (GroupNorm with one group) in the critic, no batch norm
}
INTENSITY_MAX = 1.5  # anomaly.preprocess.NORM_CLIP


def to_gan(x: torch.Tensor) -> torch.Tensor:
    return x * (2.0 / INTENSITY_MAX) - 1.0


def from_gan(y: torch.Tensor) -> torch.Tensor:
    return (y + 1.0) * (INTENSITY_MAX / 2.0)


def _levels(size: int) -> int:
    n = {32: 3, 64: 4, 128: 5}.get(int(size))
    if n is None:
        raise ValueError(f"f-AnoGAN internal size must be 32, 64 or 128, got {size}")
    return n


class Generator(nn.Module):
    """z (N, latent) -> image (N, 1, size, size) in [-1, 1] (tanh); transposed convs, batch norm."""

    def __init__(self, arch: dict):
        super().__init__()
        n, w = _levels(arch["size"]), int(arch["width"])
        ch = [w * 2 ** i for i in reversed(range(n))]  # e.g. 128, 64, 32, 16
        self.fc = nn.Linear(int(arch["latent"]), ch[0] * 16)
        self.c0 = ch[0]
        layers: list[nn.Module] = [nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], 1, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(len(z), self.c0, 4, 4))


class ConvStack(nn.Module):
    """size -> 4x4 strided 4x4 convs (w, 2w, 4w, 8w), LeakyReLU, optional layer norm; flattened."""

    def __init__(self, arch: dict, norm: str):
        super().__init__()
        n, w = _levels(arch["size"]), int(arch["width"])
        ch = [1] + [w * 2 ** i for i in range(n)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(ch[:-1], ch[1:])):
            layers.append(nn.Conv2d(a, b, 4, 2, 1))
            if norm == "layer" and i > 0:
                layers.append(nn.GroupNorm(1, b))
            layers.append(nn.LeakyReLU(0.2, True))
        self.body = nn.Sequential(*layers)
        self.out_features = ch[-1] * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class Critic(nn.Module):
    """WGAN-GP critic: conv stack -> linear score; ``features`` = the penultimate layer (f(x))."""

    def __init__(self, arch: dict):
        super().__init__()
        self.features_net = ConvStack(arch, arch.get("critic_norm", "layer"))
        self.fc = nn.Linear(self.features_net.out_features, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features_net(x)).view(-1)


class Encoder(nn.Module):
    """izi_f encoder: image -> z in [-1, 1] (critic-like conv stack, linear, tanh)."""

    def __init__(self, arch: dict):
        super().__init__()
        self.conv = ConvStack(arch, "layer")
        self.fc = nn.Linear(self.conv.out_features, int(arch["latent"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(self.conv(x)))


class FAnoGAN(nn.Module):
    """G, D, E together (state-dict prefixes ``G.``, ``D.``, ``E.``) and the resampling."""

    def __init__(self, arch: dict | None = None):
        super().__init__()
        self.arch = {**DEFAULT_ARCH, **(arch or {})}
        self.G = Generator(self.arch)
        self.D = Critic(self.arch)
        self.E = Encoder(self.arch)

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) model-space images -> (N, 1, size, size) in [-1, 1]."""
        s = int(self.arch["size"])
        if x.shape[-1] != s:
            x = F.interpolate(x, size=(s, s), mode="area")
        return to_gan(x)

    def to_output(self, y: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 1, size, size) in [-1, 1] -> (N, 1, S, S) model-space intensities."""
        if y.shape[-1] != size:
            y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)
        return from_gan(y)
