"""A linear stochastic relaxation on a periodic field: the smallest system with an exact closure.

Full model: ``dv/dt = -gamma v + U`` where the closure ``U`` is a random forcing drawn each step
from a stationary Gaussian field, ``U_n = mean_forcing + xi_n / sqrt(dt)`` with
``xi_n ~ N(0, C)`` (so ``v`` is an Ornstein–Uhlenbeck field). The reduced model is the same
explicit Euler step with ``U`` supplied by the caller; with the exact closure law, ensembles
are calibrated by construction, which makes this system the reference for calibration tests.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from .._types import check_generator, check_tensor
from ..errors import ConfigError, ShapeError, format_error
from ..scores.analytic import SpectralCovariance, grf_spectrum
from .base import AbstractSystem

__all__ = ["LinearRelaxation"]


class LinearRelaxation(AbstractSystem):
    """``v_{n+1} = v_n + dt (-gamma v_n + U_n)`` on an ``n x n`` (or ``n``) periodic grid.

    Args:
        n: Grid points per side.
        spatial_dims: 1 or 2.
        gamma: Relaxation rate.
        dt: Time step.
        forcing_grf: Spectrum parameters of the forcing noise (``alpha``, ``tau``, ``scale``).
        forcing_mean: Constant mean of the closure.
    """

    spatial_dims: ClassVar[int] = 2
    stochastic: ClassVar[bool] = True

    def __init__(self, n: int = 32, spatial_dims: int = 2, gamma: float = 1.0, dt: float = 0.01,
                 forcing_grf: dict[str, float] | None = None, forcing_mean: float = 0.0) -> None:
        if spatial_dims not in (1, 2):
            raise ConfigError(format_error("spatial_dims", "1 or 2", repr(spatial_dims)))
        if not (isinstance(n, int) and n >= 4):
            raise ConfigError(format_error("n", "an integer >= 4", repr(n)))
        if not dt > 0:
            raise ConfigError(format_error("dt", "a positive float", repr(dt)))
        self.n, self.dims, self.gamma, self.dt = n, spatial_dims, float(gamma), float(dt)
        self.forcing_grf = dict(forcing_grf or {"alpha": 2.0, "tau": 3.0, "scale": 400.0})
        self.forcing_mean = float(forcing_mean)
        p = self.forcing_grf
        self.noise_cov = SpectralCovariance((1, *self.spatial), lambda k: grf_spectrum(k, p["alpha"], p["tau"], p["scale"]))

    @property
    def spatial(self) -> tuple[int, ...]:
        """Grid shape."""
        return (self.n,) * self.dims

    def _check_state(self, state: Tensor) -> None:
        check_tensor("state", state, rank=2 + self.dims)
        if tuple(state.shape[1:]) != (1, *self.spatial):
            raise ShapeError(format_error("state", f"(batch, 1, {', '.join(map(str, self.spatial))})",
                                          f"shape {tuple(state.shape)}"))

    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None) -> Tensor:
        dt = self.dt if dt is None else dt
        self._check_state(state)
        rhs = -self.gamma * state
        if closure_term is not None:
            if closure_term.shape != state.shape:
                raise ShapeError(format_error("closure_term", f"shape {tuple(state.shape)} like state",
                                              f"shape {tuple(closure_term.shape)}"))
            rhs = rhs + closure_term
        return state + dt * rhs

    def closure_sample(self, batch: int, *, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32, dt: float | None = None) -> Tensor:
        """Draw the true closure ``U_n`` for ``batch`` members, ``(batch, 1, *spatial)``."""
        dt = self.dt if dt is None else dt
        xi = self.noise_cov.sample(batch, generator=check_generator(generator), dtype=torch.float64)
        return (self.forcing_mean + xi / math.sqrt(dt)).to(dtype)

    def closure_law(self, dt: float | None = None) -> dict[str, float | dict[str, float]]:
        """Parameters of the exact closure law, for :class:`~stochclosure.scores.GaussianScore`."""
        dt = self.dt if dt is None else dt
        p = dict(self.forcing_grf)
        p["scale"] = p["scale"] / dt
        return {"mean": self.forcing_mean, "grf": p}

    def initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        return self.noise_cov.sample(batch, generator=check_generator(generator), dtype=dtype)

    @classmethod
    def example(cls) -> LinearRelaxation:
        return cls(n=16)
