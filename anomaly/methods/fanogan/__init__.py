"""f-AnoGAN: WGAN-GP generator/critic and the izi_f encoder."""

from anomaly.methods.fanogan.method import FAnoGANMethod  # noqa: F401
