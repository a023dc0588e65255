"""Probabilistic rollouts: closures as pyro sample sites, vectorised ensembles, handlers.

``rollout(system, closure, state0, n_steps, ...)`` is a pyro program, so pyro's handlers
(``trace``, ``condition``, ``replay``, ``seed``, ``block``) and ``pyro.infer.Predictive`` apply
unchanged; :func:`ensemble` runs a whole ensemble in one batched pass.
"""

from .core import (
    ClosureAR1,
    Hold,
    NoiseAR1,
    Observation,
    StreamedObservations,
    WarmStart,
    default_condition,
    ensemble,
    regular_points,
    rollout,
)
from .distributed import distributed_ensemble
from .handlers import (
    DeterministicClosure,
    RolloutOptions,
    deterministic_closure,
    hold_between,
    no_closure,
    perturb_initial,
    resample_every,
    rollout_option,
)
from .result import RolloutResult
from .resume import resumable_ensemble

__all__ = [
    "rollout",
    "ensemble",
    "resumable_ensemble",
    "distributed_ensemble",
    "RolloutResult",
    "Hold",
    "ClosureAR1",
    "NoiseAR1",
    "WarmStart",
    "Observation",
    "StreamedObservations",
    "default_condition",
    "regular_points",
    "RolloutOptions",
    "DeterministicClosure",
    "rollout_option",
    "resample_every",
    "hold_between",
    "no_closure",
    "perturb_initial",
    "deterministic_closure",
]
