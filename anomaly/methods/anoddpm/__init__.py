"""AnoDDPM: simplex-noise partial diffusion (Wyatt et al., CVPR-W 2022)."""

from anomaly.methods.anoddpm.method import AnoDDPM  # noqa: F401
