"""Coarse noise (Kascenas et al., MedIA 2023): low-resolution Gaussian noise, upsampled, shifted.

Gaussian noise of standard deviation ``std`` is drawn on a ``res`` x ``res`` grid (plus one
cell on each side), upsampled bilinearly to the image size (plus one cell on each side) and
cropped at a random offset (0..2 cells), so the grid is randomly shifted per image without
the wrap-around seam of ``torch.roll`` used in the original code. The field is zeroed outside
the brain mask. Note that bilinear interpolation lowers the pixel-wise std between grid
points (``std`` is that of the low-resolution draws, as in the paper).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def coarse_noise(masks, res: int = 16, std: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise shaped like ``masks`` ((B,1,H,W) or (B,H,W), bool/0-1), zero outside them, float32."""
    m = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
    squeeze = m.ndim == 3
    if squeeze:
        m = m[:, None]
    b, c, h, w = m.shape
    ch, cw = max(1, round(h / res)), max(1, round(w / res))
    lo = torch.randn((b, c, res + 2, res + 2), generator=generator) * float(std)
    big = F.interpolate(lo, size=(h + 2 * ch, w + 2 * cw), mode="bilinear", align_corners=False)
    oy = torch.randint(0, 2 * ch + 1, (b,), generator=generator).tolist()
    ox = torch.randint(0, 2 * cw + 1, (b,), generator=generator).tolist()
    out = torch.stack([big[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(oy, ox))])
    out = out * m.to(out.dtype)
    return out[:, 0] if squeeze else out
