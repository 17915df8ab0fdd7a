"""Seeded, vectorised multi-octave 2D simplex noise (AnoDDPM's noise), in torch.

AnoDDPM (Wyatt et al., CVPR-W 2022) replaces the DDPM's white Gaussian noise with
multi-octave simplex noise: a sum of simplex-noise layers whose wavelength halves and
whose amplitude is multiplied by ``persistence`` at each octave. Its low-frequency
content corrupts whole lesion-sized regions, which the model then "repairs".

This is our own implementation of Perlin's 2D simplex noise (skewed triangular grid,
12 hashed gradient directions, radial fall-off (0.5 - r^2)^4), evaluated for a whole
batch at once. Each image draws its own permutation table and coordinate offset from
the given ``torch.Generator``, so the noise is reproducible for a seed. The summed
octaves are standardised per image to zero mean and unit variance, which is what the
diffusion forward process ``sqrt(a) x0 + sqrt(1 - a) eps`` expects of ``eps``.
"""

from __future__ import annotations

import math

import torch

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)
_G2 = (3.0 - math.sqrt(3.0)) / 6.0
# The 12 gradient directions of 3D simplex noise, projected on the plane (as in Gustavson's 2D code).
_GRAD = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0],
                      [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float32)


def _simplex2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Single-octave simplex noise at coordinates x, y (B, P) with per-image tables perm (B, 512)."""
    s = (x + y) * _F2
    i = torch.floor(x + s)
    j = torch.floor(y + s)
    t = (i + j) * _G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    upper = (x0 > y0).long()  # which of the two triangles of the skewed cell
    i1, j1 = upper, 1 - upper
    x1, y1 = x0 - i1 + _G2, y0 - j1 + _G2
    x2, y2 = x0 - 1.0 + 2.0 * _G2, y0 - 1.0 + 2.0 * _G2
    ii = torch.remainder(i, 256).long()
    jj = torch.remainder(j, 256).long()
    grad = _GRAD.to(device=x.device, dtype=x.dtype)

    def corner(di, dj, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        h = torch.gather(perm, 1, ii + di + torch.gather(perm, 1, jj + dj)) % 12
        g = grad[h]
        fall = torch.clamp(0.5 - cx * cx - cy * cy, min=0.0)
        return fall.pow(4) * (g[..., 0] * cx + g[..., 1] * cy)

    n = corner(0, 0, x0, y0) + corner(i1, j1, x1, y1) + corner(1, 1, x2, y2)
    return 70.0 * n  # scales single-octave noise to about [-1, 1]


def simplex_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, octaves: int = 4,
                  persistence: float = 0.8, period: float = 16.0, normalise: bool = True,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Multi-octave simplex noise of ``shape`` (..., H, W), reproducible for ``generator``.

    ``period`` is the wavelength in pixels of the first (coarsest) octave; each further
    octave halves it and multiplies the amplitude by ``persistence`` (AnoDDPM: 6 octaves,
    persistence 0.8, period 64 at 256 x 256; here 4 octaves from period 16 at 64 x 64,
    the same wavelengths relative to the image). With ``normalise`` every (H, W) image is
    standardised to zero mean and unit variance.
    """
    *lead, h, w = shape
    b = int(math.prod(lead)) if lead else 1
    perm = torch.argsort(torch.rand(b, 256, generator=generator), dim=1)
    perm = torch.cat([perm, perm], dim=1)  # (B, 512): indices up to 255 + 255 stay in range
    offset = torch.rand(b, 2, 1, generator=generator) * 1024.0
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)])[None]  # (1, 2, P)
    out = torch.zeros(b, h * w, dtype=torch.float64)
    amp, per = 1.0, float(period)
    for _ in range(int(octaves)):
        c = grid / per + offset.double()  # (B, 2, P) in lattice units of this octave
        out += amp * _simplex2d(c[:, 0], c[:, 1], perm)
        amp *= persistence
        per /= 2.0
    out = out.view(b, h, w)
    if normalise:
        out = out - out.mean(dim=(1, 2), keepdim=True)
        out = out / out.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return out.to(dtype).reshape(*lead, h, w) if lead else out[0].to(dtype)


def make_noise(kind: str, shape: tuple[int, ...], generator: torch.Generator | None = None,
               **simplex_kw) -> torch.Tensor:
    """``kind`` 'simplex' (multi-octave, unit variance) or 'gaussian' (white N(0, 1))."""
    if kind == "simplex":
        return simplex_noise(shape, generator, **simplex_kw)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator)
    raise ValueError(f"unknown noise {kind!r}: 'simplex' or 'gaussian'")
