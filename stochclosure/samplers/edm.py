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
from typing import ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE
from .base import Callback, GridSampler, NoiseSource, StepInfo

__all__ = ["edm_heun", "EDMHeun"]


def _noise_level(sde: AbstractSDE, t: float) -> float:
    """``s_t = sigma_t / alpha_t`` at a scalar time."""
    return float(torch.exp(-sde.log_snr(torch.tensor([t], dtype=torch.float64)))[0])


def _time_of_level(sde: AbstractSDE, s: float) -> float:
    """The time whose noise level ``sigma_t / alpha_t`` is ``s``."""
    return float(sde.t_from_log_snr(torch.tensor([-math.log(s)], dtype=torch.float64))[0])


def edm_heun(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource,
             callback: Callback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Heun steps of ``dy/ds = (y - D(y; s)) / s`` over ``ts``, with optional churn.

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE (only ``marginal_coefficients``, ``log_snr``, ``t_from_log_snr`` and
            ``denoise`` are used).
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times (a ``karras_sigma`` grid reproduces Karras et al.).
        noise: Source of the churn noise; step ``i`` uses the normalised Brownian increment over
            ``[ts[i + 1], ts[i]]``, so a path-consistent source gives step-count-consistent churn.
        callback: Called after each step.
        s_churn: Total churn ``S_churn``; ``gamma_i = min(S_churn / steps, sqrt(2) - 1)``.
        s_tmin: Churn only where the noise level ``s_i`` lies in ``[s_tmin, s_tmax]``.
        s_tmax: Upper end of that band.
        s_noise: Scale of the churn noise (slightly above 1 offsets the denoiser's shrinkage).

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    n = len(ts) - 1
    s_max = _noise_level(sde, sde.T)
    nfe = 0
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0

    def alpha_of(t_: float) -> float:
        return float(sde.marginal_coefficients(torch.tensor([t_], dtype=torch.float64))[0][0])

    def slope(y_: Tensor, t_: float, s_: float, a_: float) -> Tensor:
        tb = torch.full((y_.shape[0],), t_, dtype=y_.dtype, device=y_.device)
        x_ = a_ * y_
        return (y_ - sde.denoise(x_, tb, score_fn(x_, tb))) / s_

    y = x / alpha_of(float(ts[0]))
    for i in range(n):
        t_cur, t_next = float(ts[i]), float(ts[i + 1])
        s_cur, s_next = _noise_level(sde, t_cur), _noise_level(sde, t_next)
        if gamma > 0 and s_tmin <= s_cur <= s_tmax:
            s_hat = min(s_cur * (1.0 + gamma), s_max)
            t_hat = min(_time_of_level(sde, s_hat), sde.T)
            z = noise.increment(t_cur, t_next, y) / math.sqrt(abs(t_cur - t_next))
            y = y + math.sqrt(max(s_hat**2 - s_cur**2, 0.0)) * s_noise * z
        else:
            s_hat, t_hat = s_cur, t_cur
        d = slope(y, t_hat, s_hat, alpha_of(t_hat))
        y_euler = y + (s_next - s_hat) * d
        d2 = slope(y_euler, t_next, s_next, alpha_of(t_next))
        y = y + (s_next - s_hat) * 0.5 * (d + d2)
        nfe += 2
        if callback is not None:
            callback(StepInfo(i, n, t_cur, t_next, alpha_of(t_next) * y, nfe))
    return alpha_of(float(ts[-1])) * y


class EDMHeun(GridSampler):
    """Karras et al. (2022) sampler: Heun in noise-level coordinates, rho-spaced levels, optional churn.

    ``steps`` Heun steps (two evaluations each) from ``T`` to ``eps``; with ``denoise`` the
    final jump to noise level 0 is the Euler step of Alg. 2, which is exactly Tweedie's
    denoiser (one evaluation): ``nfe = 2 steps + 1``. ``s_churn = 0`` is the deterministic
    probability-flow sampler (Alg. 1).

    Args:
        steps: Default number of Heun steps.
        grid: Time grid (default ``"karras_sigma"``: rho-spacing of ``sigma_t / alpha_t``).
        t_start: Start time (default ``sde.T``).
        t_end: End time (default ``sde.eps``).
        rho: Karras exponent (7).
        denoise: Finish with the jump to noise level 0 (Tweedie's denoiser).
        data_std: Std of the data assumed by the starting law.
        s_churn: Total stochastic churn (0: deterministic).
        s_tmin: Lower noise level of the churn band.
        s_tmax: Upper noise level of the churn band.
        s_noise: Churn noise scale.
    """

    solver = staticmethod(edm_heun)
    nfe_per_step: ClassVar[int] = 2
    default_steps: ClassVar[int] = 18

    def __init__(self, steps: int | None = None, grid: str = "karras_sigma", t_start: float | None = None,
                 t_end: float | None = None, rho: float = 7.0, denoise: bool = True, data_std: float = 0.0,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> None:
        if not s_churn >= 0:
            raise ConfigError(format_error("s_churn", "a float >= 0", repr(s_churn), "use 0 for the deterministic ODE"))
        if not 0 <= s_tmin <= s_tmax:
            raise ConfigError(format_error("s_tmin/s_tmax", "0 <= s_tmin <= s_tmax", f"{s_tmin}, {s_tmax}"))
        if not s_noise > 0:
            raise ConfigError(format_error("s_noise", "a positive float", repr(s_noise)))
        super().__init__(steps, grid, t_start, t_end, rho, denoise, data_std, s_churn=float(s_churn),
                         s_tmin=float(s_tmin), s_tmax=float(s_tmax), s_noise=float(s_noise))

    stochastic: ClassVar[bool] = False  # deterministic by default; s_churn > 0 draws from ``noise``
