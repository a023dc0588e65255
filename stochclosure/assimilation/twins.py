"""Truths of twin experiments: the run that is observed, and that the filter is scored against.

A twin holds its state as named tensors (so the cycling driver can checkpoint it), advances it by
a physical time span and shows it as a reduced state ``(C, *grid)`` (what is observed and what the
ensemble is compared with). :func:`twin_for` picks the most faithful truth a system offers:

* :class:`Lorenz96Twin`: the full two-scale model (``X`` and the fast ``Y``), RK4 at the system's
  ``dt``; the reduced state is ``X`` ``(1, K)``.
* :class:`FullModelTwin`: a system's own full model ``full_step(state, dt, generator=...)``
  (stochastic 2-D Navier–Stokes; the filtered DNS of the subgrid system, observed and scored
  through the system's filter on the coarse grid).
* :class:`ReducedTwin`: the reduced model driven by a given "true" closure through
  :func:`~stochclosure.rollouts.rollout` (a perfect-model twin), for systems without a full model.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from pyro import poutine
from torch import Tensor

from ..errors import ConfigError, ShapeError, format_error

__all__ = ["AbstractTwin", "Lorenz96Twin", "FullModelTwin", "ReducedTwin", "twin_for"]


def _substeps(duration: float, dt: float, what: str) -> int:
    n = round(duration / dt)
    if n < 1 or abs(n * dt - duration) > 1e-9 * max(duration, dt):
        raise ConfigError(format_error("steps_per_cycle", f"a cycle length that is a whole number of the {what}'s "
                                                          f"steps (dt = {dt:g})", f"a cycle of {duration:g} time units",
                                       "choose steps_per_cycle and dt so that the cycle is a multiple of it"))
    return n


def _one(state: Tensor, event_rank: int, name: str) -> Tensor:
    """``(C, *grid)`` or ``(1, C, *grid)`` -> ``(1, C, *grid)``."""
    if not isinstance(state, Tensor) or state.dim() not in (event_rank, event_rank + 1) or \
            (state.dim() == event_rank + 1 and state.shape[0] != 1):
        got = f"shape {tuple(state.shape)}" if isinstance(state, Tensor) else type(state).__name__
        raise ShapeError(format_error(name, f"one state of rank {event_rank} (C, *grid), or (1, C, *grid)", got))
    return state if state.dim() == event_rank + 1 else state[None]


def _event_rank(system: Any) -> int:
    """Rank of one reduced state ``(C, *grid)`` (as :func:`~stochclosure.rollouts.rollout` reads it)."""
    spatial = getattr(system, "spatial", None)
    return 1 + (len(spatial) if isinstance(spatial, tuple) else int(system.spatial_dims))


class AbstractTwin(abc.ABC):
    """The truth of a twin experiment (see the module docstring)."""

    @abc.abstractmethod
    def initial(self, truth_state0: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """The twin's state at the start, from what the caller gave (checked)."""

    @abc.abstractmethod
    def advance(self, state: dict[str, Tensor], duration: float, generator: torch.Generator) -> dict[str, Tensor]:
        """The state ``duration`` physical time units later (randomness from ``generator``)."""

    @abc.abstractmethod
    def reduced(self, state: dict[str, Tensor]) -> Tensor:
        """The truth as one reduced state ``(C, *grid)`` (observed and scored)."""

    def spec(self) -> dict[str, Any]:
        """What identifies this truth (JSON)."""
        return {"type": type(self).__name__}


class Lorenz96Twin(AbstractTwin):
    """The full two-scale Lorenz-96 model of a :class:`~stochclosure.systems.Lorenz96` system.

    ``truth_state0`` is ``X`` ``(1, K)`` (the fast variables then start from ``0.1 N(0, 1)``, drawn
    from the run's seed; spin the truth up before use) or a pair ``(X, Y)`` with ``Y`` ``(K, J)``.

    Args:
        system: The Lorenz-96 system.
        dt: RK4 step of the full model (default ``system.dt``).
    """

    def __init__(self, system: Any, dt: float | None = None) -> None:
        self.system, self.dt = system, float(system.dt if dt is None else dt)

    def initial(self, truth_state0: Any, generator: torch.Generator) -> dict[str, Tensor]:
        s = self.system
        if isinstance(truth_state0, (tuple, list)) and len(truth_state0) == 2:
            x, y = truth_state0
            x = _one(x, 2, "truth_state0")
            y = y if isinstance(y, Tensor) and y.dim() == 3 else (y[None] if isinstance(y, Tensor) else y)
            if not isinstance(y, Tensor) or tuple(y.shape) != (1, s.K, s.J):
                got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
                raise ShapeError(format_error("truth_state0[1]", f"the fast variables Y ({s.K}, {s.J})", got))
        else:
            x = _one(truth_state0, 2, "truth_state0")
            y = 0.1 * torch.randn((1, s.K, s.J), generator=generator, dtype=torch.float64).to(x.dtype)
        s._check_x(x, "truth_state0")
        return {"x": x, "y": y.to(x.dtype)}

    def advance(self, state: dict[str, Tensor], duration: float, generator: torch.Generator) -> dict[str, Tensor]:
        x, y = state["x"], state["y"]
        for _ in range(_substeps(duration, self.dt, "full model")):
            x, y = self.system.full_step(x, y, self.dt)
        return {"x": x, "y": y}

    def reduced(self, state: dict[str, Tensor]) -> Tensor:
        return state["x"][0]

    def spec(self) -> dict[str, Any]:
        return {"type": "Lorenz96Twin", "dt": self.dt}


class FullModelTwin(AbstractTwin):
    """A system's full model ``full_step(state, dt, generator=...)``; seen through ``system.filter`` if it has one.

    ``truth_state0`` is one full-model state ``(C, *grid_full)`` (or with a leading 1).

    Args:
        system: A system with ``full_step`` (e.g. :class:`~stochclosure.systems.NavierStokes2D`,
            :class:`~stochclosure.systems.NavierStokes2DSubgrid`).
        dt: Step of the full model (default ``system.dt``).
    """

    def __init__(self, system: Any, dt: float | None = None) -> None:
        if not callable(getattr(system, "full_step", None)):
            raise ConfigError(format_error("system", "a system with a full model (full_step)", type(system).__name__,
                                           "use ReducedTwin(system, true_closure)"))
        self.system, self.dt = system, float(system.dt if dt is None else dt)

    def initial(self, truth_state0: Any, generator: torch.Generator) -> dict[str, Tensor]:
        return {"state": _one(truth_state0, _event_rank(self.system), "truth_state0")}

    def advance(self, state: dict[str, Tensor], duration: float, generator: torch.Generator) -> dict[str, Tensor]:
        w = state["state"]
        for _ in range(_substeps(duration, self.dt, "full model")):
            w = self.system.full_step(w, self.dt, generator=generator)
        return {"state": w}

    def reduced(self, state: dict[str, Tensor]) -> Tensor:
        w = state["state"]
        filt = getattr(self.system, "filter", None)
        return (filt(w) if callable(filt) else w)[0]

    def spec(self) -> dict[str, Any]:
        return {"type": "FullModelTwin", "dt": self.dt}


class ReducedTwin(AbstractTwin):
    """The reduced model with a "true" closure, run by :func:`~stochclosure.rollouts.rollout` (one member).

    Each advance is one rollout seeded from the generator; the closure's between-draw memory
    restarts at every cycle.

    Args:
        system: The reduced solver.
        closure: The true closure (anything :func:`~stochclosure.rollouts.rollout` takes).
        dt: Solver step (default ``system.dt``).
        **rollout_kwargs: Further :func:`~stochclosure.rollouts.rollout` options.
    """

    def __init__(self, system: Any, closure: Any, dt: float | None = None, **rollout_kwargs: Any) -> None:
        self.system, self.closure, self.dt = system, closure, float(system.dt if dt is None else dt)
        self.kwargs = rollout_kwargs

    def initial(self, truth_state0: Any, generator: torch.Generator) -> dict[str, Tensor]:
        return {"state": _one(truth_state0, _event_rank(self.system), "truth_state0")}

    def advance(self, state: dict[str, Tensor], duration: float, generator: torch.Generator) -> dict[str, Tensor]:
        from ..rollouts import rollout

        n = _substeps(duration, self.dt, "reduced model")
        seed = int(torch.randint(0, 2**32, (1,), generator=generator))
        res = poutine.seed(rollout, rng_seed=seed)(self.system, self.closure, state["state"], n, dt=self.dt,
                                                    record_every=n, **self.kwargs)
        return {"state": res.states[-1]}

    def reduced(self, state: dict[str, Tensor]) -> Tensor:
        return state["state"][0]

    def spec(self) -> dict[str, Any]:
        return {"type": "ReducedTwin", "dt": self.dt, "kwargs": {k: repr(v) for k, v in sorted(self.kwargs.items())}}


def twin_for(system: Any, closure: Any = None) -> AbstractTwin:
    """The default truth of ``system``: its full model if it has one, else the reduced model with ``closure``."""
    from ..systems.lorenz96 import Lorenz96

    if isinstance(system, Lorenz96):
        return Lorenz96Twin(system)
    if callable(getattr(system, "full_step", None)):
        return FullModelTwin(system)
    if closure is None:
        raise ConfigError(format_error("truth", "a twin (the system has no full model)", "none",
                                       "pass truth=ReducedTwin(system, true_closure)"))
    return ReducedTwin(system, closure)

