"""Denoising autoencoder with coarse noise (Kascenas et al., MedIA 2023)."""

from anomaly.methods.dae.method import DenoisingAE  # noqa: F401
