"""DDAD: dual-distribution discrepancy (NDM / UDM autoencoder ensembles)."""

from anomaly.methods.ddad.method import DDAD  # noqa: F401
