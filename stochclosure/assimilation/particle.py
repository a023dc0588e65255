"""A bootstrap particle filter for small states, run by :class:`pyro.infer.SMCFilter`.

The state-space model is written as a pyro program (:class:`ForecastModel`):

* the transition is *one forecast segment*: every particle advances ``steps_per_cycle`` solver
  steps in one batched :func:`~stochclosure.rollouts.rollout` (particles are its cases), with all
  its randomness (closure draws, AR(1) innovations, ...) keyed by one integer per particle, drawn
  at the site ``key/{t}`` (:class:`~stochclosure.distributions.MemberSeed`);
* the observation ``y_t`` is the site ``obs/{t}`` with the operator's Gaussian likelihood
  ``N(H x_t, R)`` (:meth:`~.observations.AbstractObservation.likelihood`).

The guide (:class:`TransitionGuide`) proposes from the model's own transition: it draws the keys
``key/{t}`` from the same law. :class:`~pyro.infer.SMCFilter` replays the model on the guide's
keys, so the model's forecast *is* the proposal and the importance weight reduces to the
observation likelihood: the bootstrap filter (Gordon, Salmond & Smith 1993), with systematic
resampling when the effective sample size drops below ``ess_threshold * particles``. The forecast
runs inside :func:`pyro.poutine.block`, so only the key and observation sites reach the filter and
no closure density is ever needed (a diffusion closure has none in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SMCFilter
from torch import Tensor

from ..distributions import MemberSeed
from ..errors import ConfigError, ShapeError, format_error
from .observations import AbstractObservation, observation_from_spec

__all__ = ["ForecastModel", "TransitionGuide", "ParticleFilterResult", "BootstrapParticleFilter"]


class ForecastModel:
    """The SMC model: ``x_t = forecast(x_{t-1}; key_t)``, ``y_t ~ N(H x_t, R)``.

    Args:
        system: The reduced solver.
        closure: The closure (anything :func:`~stochclosure.rollouts.rollout` takes).
        observation: The observation operator.
        steps_per_cycle: Solver steps per transition.
        dt: Solver step (default ``system.dt``).
        **rollout_kwargs: Further rollout options (``keyed`` stays True).
    """

    def __init__(self, system: Any, closure: Any, observation: AbstractObservation, steps_per_cycle: int,
                 dt: float | None = None, **rollout_kwargs: Any) -> None:
        self.system, self.closure, self.op = system, closure, observation
        self.steps, self.dt, self.kwargs = steps_per_cycle, dt, rollout_kwargs

    def init(self, state: Any, initial: Tensor) -> None:
        """Store the initial particles ``(P, *state)``."""
        state["x"] = initial

    def forecast(self, x: Tensor, keys: Tensor) -> Tensor:
        """All particles ``x`` ``(P, *state)`` one segment ahead, with the randomness keyed by ``keys`` ``(P,)``."""
        from ..rollouts import rollout

        def program() -> Any:
            return rollout(self.system, self.closure, x, self.steps, dt=self.dt, record_every=self.steps, keyed=True,
                           **self.kwargs)

        with poutine.block():
            run = poutine.condition(program, data={self.kwargs.get("prefix", "") + "member_seed": keys})
            return run().states[-1]

    def step(self, state: Any, obs_values: Tensor, t: int) -> None:
        """One transition and one observation."""
        keys = pyro.sample(f"key/{t}", MemberSeed())                         # (P, 1): particles are plate dim -2
        x = self.forecast(state["x"], keys.reshape(-1))
        state["x"] = x
        pyro.sample(f"obs/{t}", self.op.likelihood(x[:, None]), obs=obs_values)


class TransitionGuide:
    """The bootstrap proposal: the model's own transition (its keys drawn from their law).

    Args:
        model: The :class:`ForecastModel`.
    """

    def __init__(self, model: ForecastModel) -> None:
        self.model = model

    def init(self, state: Any, initial: Tensor) -> None:
        """Nothing to propose at the start."""

    def step(self, state: Any, obs_values: Tensor, t: int) -> None:
        """Draw the transition's keys."""
        pyro.sample(f"key/{t}", MemberSeed())


@dataclass
class ParticleFilterResult:
    """Filtering moments after each observation.

    Attributes:
        mean: ``(T, *state)`` weighted particle means ``E[x_t | y_1..t]``.
        variance: ``(T, *state)`` weighted variances.
        ess: ``(T,)`` effective sample size after each weighting (before any resampling).
        particles: ``(P, *state)`` the last particles.
        log_weights: ``(P,)`` their normalised log weights.
    """

    mean: Tensor
    variance: Tensor
    ess: Tensor
    particles: Tensor
    log_weights: Tensor


class BootstrapParticleFilter:
    """Bootstrap particle filter over forecast segments of a reduced model (for small states).

    Args:
        system: The reduced solver.
        closure: The closure (anything :func:`~stochclosure.rollouts.rollout` takes).
        observation: The observation operator (or its spec).
        particles: Number of particles ``P``.
        steps_per_cycle: Solver steps between observations.
        dt: Solver step (default ``system.dt``).
        ess_threshold: Resample when ``ESS < ess_threshold * P``.
        **rollout_kwargs: Further rollout options of the forecast.
    """

    def __init__(self, system: Any, closure: Any, observation: AbstractObservation | dict[str, Any], particles: int,
                 steps_per_cycle: int, dt: float | None = None, ess_threshold: float = 0.5,
                 **rollout_kwargs: Any) -> None:
        for name, val in (("particles", particles), ("steps_per_cycle", steps_per_cycle)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ConfigError(format_error(name, "a positive integer", repr(val)))
        if not (isinstance(ess_threshold, (int, float)) and 0 < ess_threshold <= 1):
            raise ConfigError(format_error("ess_threshold", "a fraction in (0, 1]", repr(ess_threshold)))
        for bad in ("members", "start", "on_step", "record_every", "keyed"):
            if bad in rollout_kwargs:
                raise ConfigError(format_error(bad, "not set (the particle filter manages it)",
                                               repr(rollout_kwargs[bad])))
        self.op = observation_from_spec(observation)
        self.particles, self.ess_threshold = particles, float(ess_threshold)
        self.model = ForecastModel(system, closure, self.op, steps_per_cycle, dt, **rollout_kwargs)
        self.guide = TransitionGuide(self.model)

    def run(self, initial: Tensor, observations: Sequence[Tensor] | Tensor, *, seed: int = 0) -> ParticleFilterResult:
        """Filter a sequence of observations.

        Args:
            initial: ``(P, *state)`` particles drawn from the prior at time 0.
            observations: ``T`` vectors ``(p,)`` (a list or a ``(T, p)`` tensor), one per segment.
            seed: Seeds the keys and the resampling (same seed, same result).

        Returns:
            The :class:`ParticleFilterResult`.
        """
        if not isinstance(initial, Tensor) or initial.dim() < 2 or initial.shape[0] != self.particles:
            got = f"shape {tuple(initial.shape)}" if isinstance(initial, Tensor) else type(initial).__name__
            raise ShapeError(format_error("initial", f"a tensor ({self.particles}, *state): one state per particle",
                                          got))
        event = self.op.event_shape_of(initial, "initial")
        ys = [self.op.check_values(torch.as_tensor(y).to(initial.dtype), event, f"observations[{i}]")
              for i, y in enumerate(observations)]
        # the rollout's own plate ("cases") takes dim -1, so the particle plate goes to dim -2
        smc = _MomentSMC(self.model, self.guide, num_particles=self.particles, max_plate_nesting=1,
                         ess_threshold=self.ess_threshold)
        with torch.no_grad(), poutine.seed(rng_seed=int(seed)):
            smc.init(initial)
            smc.moments.clear()
            for t, y in enumerate(ys):
                smc.step(y, t)
        means, variances, ess = zip(*smc.moments) if smc.moments else ((), (), ())
        logw = smc.state._log_weights.double()
        return ParticleFilterResult(mean=torch.stack(means) if means else initial[:0].double(),
                                    variance=torch.stack(variances) if variances else initial[:0].double(),
                                    ess=torch.tensor(ess, dtype=torch.float64), particles=smc.state["x"],
                                    log_weights=logw - logw.logsumexp(0))


class _MomentSMC(SMCFilter):
    """:class:`~pyro.infer.SMCFilter` recording the weighted moments and ESS before each resampling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moments: list[tuple[Tensor, Tensor, float]] = []

    def _maybe_importance_resample(self) -> None:
        if "x" in self.state:
            x = self.state["x"].double()
            w = torch.softmax(self.state._log_weights.double(), 0)
            shape = (-1,) + (1,) * (x.dim() - 1)
            m = (w.reshape(shape) * x).sum(0)
            var = (w.reshape(shape) * (x - m) ** 2).sum(0)
            self.moments.append((m, var, float(1.0 / (w * w).sum()) if bool(torch.isfinite(w).all()) else math.nan))
        super()._maybe_importance_resample()
