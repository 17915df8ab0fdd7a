"""Review station for unsupervised anomaly detection in medical images."""

__version__ = "0.1.0"
