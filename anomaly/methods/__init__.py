"""Anomaly detection methods, one module each, found through the registry in ``base``."""

from anomaly.methods.base import (  # noqa: F401
    AnomalyMethod,
    MethodOutput,
    available_methods,
    get_method,
    register,
    registered_methods,
    resolve_methods,
)
