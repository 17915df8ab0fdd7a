"""Convolutional autoencoder (MONAI AutoEncoder)."""

from anomaly.methods.ae.method import ConvAE  # noqa: F401
