"""DPM-Solver++(2M): second-order multistep solver of the probability-flow ODE (Lu et al. 2022, Alg. 2).

In data-prediction form with ``x0_hat(x, t) = E[x_0 | x_t]`` (Tweedie's denoiser) and the
half log-SNR ``lambda_t = log(alpha_t / sigma_t)``, the exact solution of the probability-flow
ODE from ``s`` to ``t`` is ``x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda x0_hat dlambda``.
Treating ``x0_hat`` as constant gives the first-order step (DDIM)

    ``x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_hat(x_s, s)``,  ``h = lambda_t - lambda_s``;

replacing it by a linear extrapolation through the previous evaluation (ratio ``r = h_prev / h``)

    ``D = (1 + 1 / (2 r)) x0_hat_i - 1 / (2 r) x0_hat_{i-1}``

gives the second-order multistep rule, one evaluation per step. Only ``alpha_t`` and ``sigma_t``
enter, so VE (``alpha = 1``), VP and sub-VP are all covered. The step's coefficients are Python
floats computed in float64 (``math.expm1``), so a float64 solve is float64 throughout.
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

__all__ = ["dpm_solver_pp_2m", "DPMSolverPP2M"]


class DPMSolverPP2M(GridSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): one evaluation per step, second order, any VE/VP/sub-VP SDE.

    ``nfe = steps + denoise``. Also takes the common arguments of
    :class:`~stochclosure.samplers.base.GridSampler` (default 20 steps on the ``"log_snr"`` grid,
    uniform in ``log(alpha_t / sigma_t)``; ``"karras_sigma"`` also works well). With
    ``grid={"sigmas": [..., 0]}`` and ``lower_order_final=False`` it is k-diffusion's
    ``sample_dpmpp_2m`` (whose step to noise level 0 is the denoising step).

    Args:
        steps: Default number of steps.
        lower_order_final: Take the last step with the first-order rule. The second-order
            correction extrapolates the denoiser over the largest log-SNR step, which is
            unstable at few steps; the first-order last step keeps global order 2.
    """

    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 20
    default_grid: ClassVar[str] = "log_snr"
    stochastic: ClassVar[bool] = False
    accepts_noise: ClassVar[bool] = False

    def __init__(self, steps: int | None = None, *, lower_order_final: bool = True, **common: Any) -> None:
        if not isinstance(lower_order_final, bool):
            raise ConfigError(format_error("lower_order_final", "true or false", repr(lower_order_final)))
        super().__init__(steps, **common)
        self.lower_order_final = lower_order_final

    def init(self, state: SolverState, times: list[float]) -> SolverState:
        """``alpha``, ``sigma`` and ``lambda = log(alpha / sigma)`` on the whole grid, as float64 Python floats."""
        alpha, sigma = state.sde.marginal_coefficients(torch.tensor(times, dtype=torch.float64))
        lam = torch.log(alpha) - torch.log(sigma)
        state.memory.update(alpha=alpha.tolist(), sigma=sigma.tolist(), lam=lam.tolist(), prev_x0=None, h_prev=0.0)
        return state

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        x, i, mem = state.x, state.index, state.memory
        tb = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        x0 = state.sde.denoise(x, tb, score_fn(x, tb))
        h = mem["lam"][i + 1] - mem["lam"][i]
        if mem["prev_x0"] is None or (self.lower_order_final and i == state.n_steps - 1):
            d = x0
        else:
            r = mem["h_prev"] / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * mem["prev_x0"]
        state.x = (mem["sigma"][i + 1] / mem["sigma"][i]) * x - (mem["alpha"][i + 1] * math.expm1(-h)) * d
        mem["prev_x0"], mem["h_prev"] = x0, h
        return state


def dpm_solver_pp_2m(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource | None = None,
                     callback: Callback | None = None, lower_order_final: bool = True) -> Tensor:
    """Integrate the probability-flow ODE over ``ts`` with DPM-Solver++(2M) (the shared driver, no denoising).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times (``"log_snr"`` grids are the paper's choice).
        noise: Unused (deterministic).
        callback: Called after each step.
        lower_order_final: First-order final step (see :class:`DPMSolverPP2M`).

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    sampler = DPMSolverPP2M(steps=len(ts) - 1, lower_order_final=lower_order_final, denoise=False)
    return sampler.integrate(score_fn, sde, x, ts, noise=GaussianNoise() if noise is None else noise,
                             callback=callback)
