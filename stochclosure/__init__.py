"""stochclosure: data-driven stochastic closure modelling with conditional score-based diffusion.

Learn the distribution ``p(U | y)`` of an unresolved closure term with a conditional
score-based diffusion model, draw closures inside a coarse solver and quantify what the
closure's uncertainty does to the prediction.

The package is organised by the interfaces of its components (:mod:`.sdes`, :mod:`.scores`,
:mod:`.encoders`, :mod:`.samplers`, :mod:`.systems`); every implementation is found through
one :mod:`registry` fed by entry points.
"""

from __future__ import annotations

from . import distributions, encoders, errors, metrics, registry, rollouts, samplers, scores, sdes, systems
from ._types import Conditioning, ScoreFn, check_tensor
from .checkpoint import load_model, save_model
from .distributions import ClosureDistribution
from .errors import (
    AmbiguousPluginError,
    CheckpointError,
    ConfigError,
    DatasetError,
    DeviceError,
    DTypeError,
    IncompatibleComponentsError,
    NonFiniteError,
    OutputError,
    PluginValidationError,
    ResourceError,
    ShapeError,
    StochClosureError,
    UnknownPluginError,
)
from .losses import dsm_loss
from .model import ClosureModel
from .registry import available, register, resolve
from .rollouts import (
    ClosureAR1,
    Hold,
    NoiseAR1,
    RolloutCarry,
    RolloutResult,
    WarmStart,
    ensemble,
    resumable_ensemble,
    rollout,
)
from .scores.base import bind_score
from .train import Trainer, TrainResult

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Conditioning",
    "ClosureModel",
    "ClosureDistribution",
    "RolloutResult",
    "ensemble",
    "rollout",
    "resumable_ensemble",
    "rollouts",
    "RolloutCarry",
    "Hold",
    "ClosureAR1",
    "NoiseAR1",
    "WarmStart",
    "distributions",
    "metrics",
    "ScoreFn",
    "check_tensor",
    "bind_score",
    "dsm_loss",
    "Trainer",
    "TrainResult",
    "save_model",
    "load_model",
    "register",
    "resolve",
    "available",
    "registry",
    "sdes",
    "scores",
    "encoders",
    "samplers",
    "systems",
    "errors",
    "StochClosureError",
    "ShapeError",
    "NonFiniteError",
    "DTypeError",
    "DeviceError",
    "IncompatibleComponentsError",
    "UnknownPluginError",
    "AmbiguousPluginError",
    "PluginValidationError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "OutputError",
    "ResourceError",
]
