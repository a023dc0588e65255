"""EDM sampler: Heun on the probability-flow ODE in noise-level coordinates (Karras et al. 2022, Alg. 2).

Any SDE with kernel ``N(alpha_t x_0, sigma_t^2 I)`` becomes variance exploding in the scaled
variable ``y = x / alpha_t`` with noise level ``s_t = sigma_t / alpha_t``: ``y = x_0 + s_t z``.
Its probability-flow ODE is ``dy/ds = (y - D(y; s)) / s`` with ``D`` Tweedie's denoiser
``E[x_0 | x_t]``, which is nearly linear in ``s`` for smooth data, so Heun's rule on a
rho-spaced grid in ``s`` needs few steps. Optional stochastic churn raises the noise level of
each step by a factor ``1 + gamma`` with fresh noise before the ODE step (Alg. 2).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE
from .base import Callback, GaussianNoise, GridSampler, NoiseSource, SolverState

__all__ = ["edm_heun", "EDMHeun"]


def _noise_level(sde: AbstractSDE, t: float) -> float:
    """``s_t = sigma_t / alpha_t`` at a scalar time."""
    return float(torch.exp(-sde.log_snr(torch.tensor([t], dtype=torch.float64)))[0])


def _time_of_level(sde: AbstractSDE, s: float) -> float:
    """The time whose noise level ``sigma_t / alpha_t`` is ``s``."""
    return float(sde.t_from_log_snr(torch.tensor([-math.log(s)], dtype=torch.float64))[0])


def _alpha(sde: AbstractSDE, t: float) -> float:
    """``alpha_t`` at a scalar time."""
    return float(sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64))[0][0])


class EDMHeun(GridSampler):
    """Karras et al. (2022) sampler: Heun in noise-level coordinates, rho-spaced levels, optional churn.

    ``steps`` Heun steps (two evaluations each) from ``T`` to ``eps``; with ``denoise`` the
    final jump to noise level 0 is the Euler step of Alg. 2, which is exactly Tweedie's
    denoiser (one evaluation): ``nfe = 2 steps + 1``. ``s_churn = 0`` is the deterministic
    probability-flow sampler (Alg. 1). Also takes the common arguments of
    :class:`~stochclosure.samplers.base.GridSampler` (default 18 steps on the ``"karras_sigma"``
    grid; ``grid={"sigmas": get_sigmas_karras(n, ...)}`` with k-diffusion's trailing 0 is
    k-diffusion's ``sample_heun``).

    Churn noise: step ``i`` uses the normalised Brownian increment of ``noise`` over
    ``[ts[i + 1], ts[i]]``, so a path-consistent source gives step-count-consistent churn.

    Args:
        steps: Default number of Heun steps.
        s_churn: Total stochastic churn ``S_churn`` (0: deterministic);
            ``gamma_i = min(S_churn / steps, sqrt(2) - 1)``.
        s_tmin: Churn only where the noise level ``s_i`` lies in ``[s_tmin, s_tmax]``.
        s_tmax: Upper noise level of the churn band.
        s_noise: Churn noise scale (slightly above 1 offsets the denoiser's shrinkage).
    """

    nfe_per_step: ClassVar[int] = 2
    default_steps: ClassVar[int] = 18
    default_grid: ClassVar[str] = "karras_sigma"
    stochastic: ClassVar[bool] = False  # deterministic by default; s_churn > 0 draws from ``noise``

    def __init__(self, steps: int | None = None, *, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0, **common: Any) -> None:
        if not (isinstance(s_churn, (int, float)) and 0 <= s_churn < float("inf")):
            raise ConfigError(format_error("s_churn", "a finite float >= 0", repr(s_churn),
                                           "use 0 for the deterministic ODE"))
        if not 0 <= s_tmin <= s_tmax:
            raise ConfigError(format_error("s_tmin/s_tmax", "0 <= s_tmin <= s_tmax", f"{s_tmin}, {s_tmax}"))
        if not (isinstance(s_noise, (int, float)) and 0 < s_noise < float("inf")):
            raise ConfigError(format_error("s_noise", "a positive finite float", repr(s_noise)))
        super().__init__(steps, **common)
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), float(s_tmax), float(s_noise)

    def init(self, state: SolverState, times: list[float]) -> SolverState:
        """Change to ``y = x / alpha_t``; fix the churn ``gamma`` for this number of steps."""
        n = state.n_steps
        state.memory["y"] = state.x / _alpha(state.sde, times[0])
        state.memory["gamma"] = min(self.s_churn / n, math.sqrt(2.0) - 1.0) if self.s_churn > 0 else 0.0
        state.memory["s_max"] = _noise_level(state.sde, state.sde.T)
        return state

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        sde, y, gamma = state.sde, state.memory["y"], state.memory["gamma"]

        def slope(y_: Tensor, t_: float, s_: float, a_: float) -> Tensor:
            tb = torch.full((y_.shape[0],), t_, dtype=y_.dtype, device=y_.device)
            x_ = a_ * y_
            return (y_ - sde.denoise(x_, tb, score_fn(x_, tb))) / s_

        s_cur, s_next = _noise_level(sde, t_cur), _noise_level(sde, t_next)
        if gamma > 0 and self.s_tmin <= s_cur <= self.s_tmax:
            s_hat = min(s_cur * (1.0 + gamma), state.memory["s_max"])
            t_hat = min(_time_of_level(sde, s_hat), sde.T)
            z = noise.increment(t_cur, t_next, y) / math.sqrt(abs(t_cur - t_next))
            y = y + math.sqrt(max(s_hat**2 - s_cur**2, 0.0)) * self.s_noise * z
        else:
            s_hat, t_hat = s_cur, t_cur
        d = slope(y, t_hat, s_hat, _alpha(sde, t_hat))
        a_next = _alpha(sde, t_next)
        d2 = slope(y + (s_next - s_hat) * d, t_next, s_next, a_next)
        y = y + (s_next - s_hat) * 0.5 * (d + d2)
        state.memory["y"], state.x = y, a_next * y
        return state


def edm_heun(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource | None = None,
             callback: Callback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Heun steps of ``dy/ds = (y - D(y; s)) / s`` over ``ts`` with optional churn (the shared driver).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE (only ``marginal_coefficients``, ``log_snr``, ``t_from_log_snr`` and
            ``denoise`` are used).
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times (a ``karras_sigma`` grid reproduces Karras et al.).
        noise: Source of the churn noise (default: torch's global generator).
        callback: Called after each step.
        s_churn: Total churn (see :class:`EDMHeun`).
        s_tmin: Lower noise level of the churn band.
        s_tmax: Upper noise level of the churn band.
        s_noise: Churn noise scale.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    sampler = EDMHeun(steps=len(ts) - 1, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, denoise=False)
    return sampler.integrate(score_fn, sde, x, ts, noise=GaussianNoise() if noise is None else noise, callback=callback)
