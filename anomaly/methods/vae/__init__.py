"""Variational autoencoder (MONAI VarAutoEncoder); residual of the mean reconstruction."""

from anomaly.methods.vae.method import VAE  # noqa: F401
