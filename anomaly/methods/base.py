"""The method interface, its one result type and the registry (a contract; see docs/contracts.md).

A method is one module (or package) in ``anomaly.methods`` that subclasses
``AnomalyMethod`` and decorates it with ``@register``. Adding a method touches
nothing else: the registry discovers every module of this package.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from anomaly.errors import UnknownMethodError

CHECKPOINT_ROOT = Path(os.environ.get("ANOMALY_CHECKPOINTS", Path(__file__).resolve().parents[2] / "checkpoints"))


@dataclass
class MethodOutput:
    """What every method returns for a batch of N preprocessed slices (model space, S x S).

    pseudo_healthy: (N, S, S) reconstruction, or None (feature-space methods);
    residual: (N, S, S) raw anomaly map (>= 0, higher = more anomalous), before the
    shared post-processing; image_score: (N,) a method's own image score, or None to
    derive it from the post-processed map; extra_maps: named (N, S, S) maps such as
    DDAD's ``intra_discrepancy`` or an ``uncertainty`` map.
    """

    pseudo_healthy: np.ndarray | None
    residual: np.ndarray
    image_score: np.ndarray | None = None
    extra_maps: dict[str, np.ndarray] = field(default_factory=dict)


def flip_averaged(predict, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
    """Left-right flip test-time averaging of a ``predict(images, masks, seed)``: every map (and an
    own image score) is the mean of the slice's and its mirror's, the mirror's flipped back."""
    a = predict(images, masks, seed)
    b = predict(np.ascontiguousarray(np.asarray(images)[..., ::-1]),
                np.ascontiguousarray(np.asarray(masks)[..., ::-1]), seed)

    def mean(u: np.ndarray | None, v: np.ndarray | None) -> np.ndarray | None:
        return None if u is None else (0.5 * (u + v[..., ::-1])).astype(np.float32)

    return MethodOutput(
        pseudo_healthy=mean(a.pseudo_healthy, b.pseudo_healthy),
        residual=mean(a.residual, b.residual),
        image_score=None if a.image_score is None else 0.5 * (a.image_score + b.image_score),
        extra_maps={k: mean(v, b.extra_maps[k]) for k, v in a.extra_maps.items()},
    )


class AnomalyMethod:
    """Base class. Subclasses set the class attributes and implement ``predict``.

    ``predict(images, masks, seed)`` takes images (N, S, S) float32 normalised by
    ``anomaly.preprocess`` and brain masks (N, S, S) bool, and returns a ``MethodOutput``.
    Stochastic methods must be deterministic for a given ``seed``.
    Training lives in ``fit`` (a classmethod) so the nn.Module stays free of glue.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    on_demand: ClassVar[bool] = False  # slow methods run per slice on request in the app
    # shown in the grid's pseudo-healthy panel when ``predict`` gives no reconstruction
    no_reconstruction_note: ClassVar[str] = "no reconstruction:\nfeature-space method"
    # extra maps already on a fixed scale (1.0 = its full meaning), by name -> what 1.0 means; the
    # others are shown on a per-scan scale (1.0 = their 99.5th percentile in the scan)
    extra_map_scales: ClassVar[dict[str, str]] = {}
    # what a reader should call each extra map (default: its name); uncertainty maps say so
    extra_map_titles: ClassVar[dict[str, str]] = {}
    # after ``load``, the method's torch modules are put in channels-last memory format: the
    # same results (to float rounding) in 60-80% of the CPU time of conv nets; a method whose
    # network reshapes conv outputs with ``view`` (MONAI's VarAutoEncoder) sets it False
    channels_last: ClassVar[bool] = True
    # a method that summarises the others (the consensus): where it is shown, the slice the
    # viewer opens on follows it alone (``anomaly.analysis.OPENING_RULE``)
    summarises: ClassVar[bool] = False
    # fitted by gradient steps on networks (``anomaly.training.TrainLoop``): ``--init-from`` can start them
    trains_networks: ClassVar[bool] = True

    def __init__(self, checkpoint_dir: Path | None = None):
        from anomaly.checkpoints import load_card

        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else CHECKPOINT_ROOT / self.name
        self.card: dict = load_card(self.checkpoint_dir)
        self.load()
        if not self.card:  # a method whose load() reads no weights would otherwise score uncalibrated
            from anomaly.errors import CheckpointError

            raise CheckpointError(f"no card at {self.checkpoint_dir / 'card.json'}: train the method first "
                                  f"(python -m anomaly.train {self.name} --data DIR)")
        if self.channels_last:
            to_channels_last(self)

    def load(self) -> None:
        """Load weights from ``self.checkpoint_dir`` (called once)."""

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        raise NotImplementedError

    @property
    def calibration(self):
        from anomaly.calibration import Calibration

        cal = self.card.get("calibration")
        return Calibration.from_dict(cal) if cal else None

    @property
    def checkpoint_hash(self) -> str:
        return str(self.card.get("checkpoint_hash", "none"))


def torch_modules(method: AnomalyMethod) -> dict:
    """The torch modules a method holds as attributes, by attribute name."""
    import torch

    return {k: v for k, v in vars(method).items() if isinstance(v, torch.nn.Module)}


def to_channels_last(method: AnomalyMethod) -> list[str]:
    """Put the method's torch modules in channels-last format, in place; returns their attribute
    names. Only 4-D weights change layout."""
    import torch

    modules = torch_modules(method)
    for module in modules.values():
        module.to(memory_format=torch.channels_last)
    return list(modules)


_REGISTRY: dict[str, type[AnomalyMethod]] = {}
_INSTANCES: dict[tuple[str, str], AnomalyMethod] = {}
_LOCK = threading.Lock()
_DISCOVERED = False
UNAVAILABLE: dict[str, str] = {}  # method modules that failed to import: name -> why


class ReconstructionMethod(AnomalyMethod):
    """A method whose network maps an image to its pseudo-healthy reconstruction (AE, DAE, ...).

    Subclasses set ``default_arch`` and ``build_net(arch) -> nn.Module`` (a staticmethod);
    the residual is ``|x - net(x)|`` and the pseudo-healthy image ``net(x)`` inside the brain.
    """

    default_arch: dict = {}

    @staticmethod
    def build_net(arch: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.net = type(self).build_net(self.card.get("architecture", self.default_arch))
        self.net.load_state_dict(load_weights(self.checkpoint_dir))
        self.net.eval()

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        import torch

        x = np.ascontiguousarray(images, np.float32)
        with torch.no_grad():
            rec = self.net(torch.from_numpy(x)[:, None])[:, 0].numpy() * np.asarray(masks, np.float32)
        return MethodOutput(pseudo_healthy=rec, residual=np.abs(x - rec))


def register(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
    """Class decorator: add a method to the registry under its lower-case ``name``."""
    if not cls.name or cls.name != cls.name.lower():
        raise ValueError(f"method name must be non-empty lower case, got {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import anomaly.methods as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base",) and not mod.name.startswith("_"):
            try:
                importlib.import_module(f"anomaly.methods.{mod.name}")
            except Exception as e:  # one broken method (a missing optional package) must not take the app down
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                UNAVAILABLE[mod.name] = reason
                logging.getLogger(__name__).warning("method module anomaly.methods.%s not loaded (%s)", mod.name, reason)
    _DISCOVERED = True


def registered_methods() -> list[str]:
    """Every registered method name, in registration order."""
    _discover()
    return list(_REGISTRY)


def method_class(name: str) -> type[AnomalyMethod]:
    _discover()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        if name.lower() in UNAVAILABLE:
            raise UnknownMethodError(f"method {name!r} could not be loaded ({UNAVAILABLE[name.lower()]})") from None
        raise UnknownMethodError(
            f"unknown method {name!r}; registered: {', '.join(_REGISTRY) or 'none'}"
        ) from None


def available_methods(checkpoint_root: Path | None = None) -> list[str]:
    """Registered methods that have a trained checkpoint (a card) under ``checkpoint_root``."""
    root = Path(checkpoint_root) if checkpoint_root else CHECKPOINT_ROOT
    return [n for n in registered_methods() if (root / n / "card.json").exists()]


def get_method(name: str, checkpoint_dir: Path | None = None) -> AnomalyMethod:
    """The method, loaded once (lazily) and cached per checkpoint folder."""
    cls = method_class(name)
    key = (cls.name, str(checkpoint_dir or CHECKPOINT_ROOT / cls.name))
    with _LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = cls(checkpoint_dir)
        return _INSTANCES[key]


def resolve_methods(spec: str, checkpoint_root: Path | None = None) -> list[str]:
    """``all`` -> every registered method with a checkpoint; else a comma list, validated."""
    if spec.strip().lower() == "all":
        return available_methods(checkpoint_root)
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    for n in names:
        method_class(n)
    return names


def clear_cache() -> None:
    with _LOCK:
        _INSTANCES.clear()
