"""Probabilistic rollouts: closures as pyro sample sites, vectorised ensembles, policies.

``rollout(system, closure, state0, n_steps, ...)`` is a pyro program, so pyro's handlers
(``trace``, ``condition``, ``replay``, ``seed``, ``block``) and ``pyro.infer.Predictive`` apply
unchanged; :func:`ensemble` runs a whole ensemble in one batched pass. What happens between
fresh closure draws is a policy object (:class:`Hold`, :class:`ClosureAR1`, :class:`NoiseAR1`,
:class:`WarmStart`); the loop's carry is a :class:`RolloutCarry`.
"""

from .carry import PolicyState, RolloutCarry
from .core import ensemble, rollout
from .distributed import distributed_ensemble
from .measurements import Observation, StreamedObservations, default_condition, regular_points
from .policies import BetweenDrawPolicy, ClosureAR1, DrawContext, Hold, NoiseAR1, WarmStart
from .result import RolloutResult
from .resume import carry_from_tensors, carry_to_tensors, resumable_ensemble

__all__ = [
    "rollout",
    "ensemble",
    "resumable_ensemble",
    "distributed_ensemble",
    "RolloutResult",
    "RolloutCarry",
    "PolicyState",
    "carry_to_tensors",
    "carry_from_tensors",
    "BetweenDrawPolicy",
    "DrawContext",
    "Hold",
    "ClosureAR1",
    "NoiseAR1",
    "WarmStart",
    "Observation",
    "StreamedObservations",
    "default_condition",
    "regular_points",
]
