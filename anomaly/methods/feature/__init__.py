"""Feature-space residual, PatchCore-style, on EfficientNet-Lite0 ImageNet features."""

from anomaly.methods.feature.method import FeatureResidual  # noqa: F401
