"""AnoDDPM's torch parts: MONAI's DiffusionModelUNet, its schedulers, and partial noising/denoising.

CPU budget. A DDPM on 128 x 128 slices is far too slow to train on two CPU cores, so the
diffusion model works at 64 x 64 (``MODEL_RES``): inputs are area-downsampled 2x and the
estimate of the healthy image is brought back to 128 x 128 by adding the *difference*
(input - estimate) at 64 x 64, bilinearly upsampled, to the full-resolution input (see
``method.py``); fine detail of the input thus survives and only what the model changed
shows in the residual. The UNet is small (channels (16, 32, 64, 64), one residual block
per level, self-attention only in MONAI's middle block at 8 x 8, ~1.0 M parameters,
~4 MB) and is trained only on timesteps ``t <= t_train_max`` (500 of 1000), since test
time never noises beyond ``t_start`` (AnoDDPM's lambda: 250 in the paper, 25 as tuned here).

Intensities: model-space slices are in [0, 1.5] (``anomaly.preprocess``); the model sees
``x / 0.75 - 1`` in [-1, 1] (``to_model`` / ``from_model``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from anomaly.methods.anoddpm.noise import make_noise

MODEL_RES = 64
INTENSITY_MAX = 1.5

DEFAULT_ARCH = {
    "channels": [16, 32, 64, 64],
    "attention_levels": [False, False, False, False],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 32,
    "resolution": MODEL_RES,
}
DEFAULT_DIFFUSION = {
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",  # DDPM's 1e-4 .. 0.02 (AnoDDPM used linear betas too)
    "t_train_max": 500,  # train on t in [0, t_train_max); test noises to t_start <= this
    "train_noise": "simplex",
    "simplex": {"octaves": 4, "persistence": 0.8, "period": 16.0},
}
# Test-time settings a fresh training writes into its card. AnoDDPM's paper noises to lambda = 250
# with many denoising steps; tuned on val_lesion for this model (session 8,
# ``python -m anomaly.methods.anoddpm tune``, criterion pixel AP): t_start 250 / 10 steps 0.012,
# t_start 25 / 10 steps 0.182, t_start 25 / 1 step 0.230 (rows in checkpoints/anoddpm/card.json).
# Re-tune a model trained on other data when it has a val_lesion split.
DEFAULT_INFERENCE = {
    "t_start": 25,  # AnoDDPM's lambda (paper: 250)
    "n_steps": 1,  # DDIM steps from t_start to 0 (<= 20)
    "noise": "simplex",
    "n_samples": 2,  # noise draws per slice; their spread is the uncertainty map
    "guidance": 0.0,  # THOR-style implicit guidance tolerance (0 = off); see partial_noise_denoise
}
MAX_DDIM_STEPS = 20


def build_unet(arch: dict | None = None) -> DiffusionModelUNet:
    a = {**DEFAULT_ARCH, **(arch or {})}
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(a["channels"]),
        attention_levels=tuple(bool(v) for v in a["attention_levels"]),
        num_res_blocks=int(a["num_res_blocks"]),
        norm_num_groups=int(a["norm_num_groups"]),
        num_head_channels=int(a["num_head_channels"]),
    )


def build_ddpm(diffusion: dict | None = None) -> DDPMScheduler:
    d = {**DEFAULT_DIFFUSION, **(diffusion or {})}
    return DDPMScheduler(num_train_timesteps=int(d["num_train_timesteps"]), schedule=d["schedule"],
                         clip_sample=True)


def build_ddim(diffusion: dict | None = None) -> DDIMScheduler:
    d = {**DEFAULT_DIFFUSION, **(diffusion or {})}
    return DDIMScheduler(num_train_timesteps=int(d["num_train_timesteps"]), schedule=d["schedule"],
                         clip_sample=True, set_alpha_to_one=True)


def to_model(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 128, 128) intensities in [0, 1.5] -> (N, 1, 64, 64) in [-1, 1]."""
    if x.shape[-1] != MODEL_RES:
        x = F.interpolate(x, size=(MODEL_RES, MODEL_RES), mode="area")
    return x * (2.0 / INTENSITY_MAX) - 1.0


def from_model(y: torch.Tensor) -> torch.Tensor:
    return (y + 1.0) * (INTENSITY_MAX / 2.0)


def ddim_timesteps(t_start: int, n_steps: int, num_train_timesteps: int = 1000) -> tuple[list[int], int]:
    """Evenly spaced DDIM timesteps t_start, t_start - k, ..., > 0 (at most ``n_steps``) and the
    ``num_inference_steps`` that makes MONAI's ``DDIMScheduler.step`` jump by exactly k."""
    if not 0 < t_start < num_train_timesteps:
        raise ValueError(f"t_start must be in (0, {num_train_timesteps}), got {t_start}")
    if not 1 <= n_steps <= MAX_DDIM_STEPS:
        raise ValueError(f"n_steps must be in [1, {MAX_DDIM_STEPS}], got {n_steps}")
    k = max(1, math.ceil(t_start / n_steps))
    num_inference = num_train_timesteps // k
    while num_train_timesteps // num_inference != k:  # choose the stride MONAI will actually use
        k = num_train_timesteps // num_inference
        num_inference = num_train_timesteps // k
    steps = list(range(t_start, 0, -k))
    if len(steps) > n_steps:
        steps = steps[:n_steps]
    return steps, num_inference


@torch.no_grad()
def partial_noise_denoise(model: torch.nn.Module, x: torch.Tensor, t_start: int = 250, n_steps: int = 10,
                          noise: str = "simplex", generator: torch.Generator | None = None,
                          guidance: float = 0.0, scheduler: DDIMScheduler | None = None,
                          noise_kw: dict | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """AnoDDPM's test-time reconstruction of the healthy image, with a short DDIM schedule.

    ``x`` (B, 1, H, W) in model scale [-1, 1]. It is noised in one jump to ``t_start`` with
    ``noise`` ('simplex', multi-octave, unit variance; or 'gaussian'; or the given ``eps``),
    then denoised back to t = 0 deterministically (DDIM, eta = 0) in at most ``n_steps``
    steps of MONAI's ``DDIMScheduler.step``. Returns the estimate of x0 (B, 1, H, W).

    ``guidance`` > 0 turns on THOR-style implicit guidance (Bercea et al., MICCAI 2024): at
    every step the current x0 estimate is pulled back to the input where the two already
    agree, with weight ``w = clamp(1 - |x - x0_hat|_smoothed / guidance, 0, 1)``; the step
    then continues from the noise implied by the blended x0, so healthy tissue keeps its
    detail and only anomalous regions are redrawn.
    """
    sched = scheduler or build_ddim()
    steps, num_inference = ddim_timesteps(t_start, n_steps, sched.num_train_timesteps)
    sched.set_timesteps(num_inference)
    if eps is None:
        eps = make_noise(noise, tuple(x.shape), generator, **(noise_kw or {})).to(x)
    xt = sched.add_noise(x, eps, torch.full((x.shape[0],), t_start, dtype=torch.long, device=x.device))
    ac = sched.alphas_cumprod.to(x)
    x0 = x
    for t in steps:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        e = model(xt, tt)
        if guidance > 0:
            a = ac[t]
            x0_hat = ((xt - (1 - a).sqrt() * e) / a.sqrt()).clamp(-1, 1)
            r = F.avg_pool2d((x - x0_hat).abs(), 5, stride=1, padding=2, count_include_pad=False)
            w = (1.0 - r / guidance).clamp(0.0, 1.0)
            x0_g = w * x + (1 - w) * x0_hat
            e = (xt - a.sqrt() * x0_g) / (1 - a).sqrt()
        xt, x0 = sched.step(e, t, xt)
    return x0  # the last step's x0 prediction (equal to its output when it steps past t = 0)
