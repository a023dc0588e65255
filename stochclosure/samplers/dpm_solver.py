"""DPM-Solver++(2M): second-order multistep solver of the probability-flow ODE (Lu et al. 2022, Alg. 2).

In data-prediction form with ``x0_hat(x, t) = E[x_0 | x_t]`` (Tweedie's denoiser) and the
half log-SNR ``lambda_t = log(alpha_t / sigma_t)``, the exact solution of the probability-flow
ODE from ``s`` to ``t`` is ``x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda x0_hat dlambda``.
Treating ``x0_hat`` as constant gives the first-order step (DDIM)

    ``x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_hat(x_s, s)``,  ``h = lambda_t - lambda_s``;

replacing it by a linear extrapolation through the previous evaluation (ratio ``r = h_prev / h``)

    ``D = (1 + 1 / (2 r)) x0_hat_i - 1 / (2 r) x0_hat_{i-1}``

gives the second-order multistep rule, one evaluation per step. Only ``alpha_t`` and ``sigma_t``
enter, so VE (``alpha = 1``), VP and sub-VP are all covered.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..sdes.base import AbstractSDE
from .base import Callback, GridSampler, NoiseSource, StepInfo

__all__ = ["dpm_solver_pp_2m", "DPMSolverPP2M"]


def dpm_solver_pp_2m(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource,
                     callback: Callback | None = None, lower_order_final: bool = True) -> Tensor:
    """Integrate the probability-flow ODE over ``ts`` with DPM-Solver++(2M).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times (``"log_snr"`` grids are the paper's choice).
        noise: Unused (deterministic); part of the shared signature.
        callback: Called after each step.
        lower_order_final: Take the last step with the first-order rule. The second-order
            correction extrapolates the denoiser over the largest log-SNR step, which is
            unstable at few steps; the first-order last step keeps global order 2.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    n = len(ts) - 1
    ts64 = ts.detach().to(device="cpu", dtype=torch.float64)
    alpha, sigma = sde.marginal_coefficients(ts64)
    lam = torch.log(alpha) - torch.log(sigma)
    prev_x0: Tensor | None = None
    h_prev = 0.0
    for i in range(n):
        t_cur, t_next = float(ts64[i]), float(ts64[i + 1])
        tb = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        x0 = sde.denoise(x, tb, score_fn(x, tb))
        h = float(lam[i + 1] - lam[i])
        first_order = prev_x0 is None or (lower_order_final and i == n - 1)
        if first_order:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
        x = float(sigma[i + 1] / sigma[i]) * x - float(alpha[i + 1]) * float(torch.expm1(torch.tensor(-h))) * d
        prev_x0, h_prev = x0, h
        if callback is not None:
            callback(StepInfo(i, n, t_cur, t_next, x, i + 1))
    return x


class DPMSolverPP2M(GridSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): one evaluation per step, second order, any VE/VP/sub-VP SDE.

    ``nfe = steps + denoise``.

    Args:
        steps: Default number of steps.
        grid: Time grid (default ``"log_snr"``, uniform in ``log(alpha_t / sigma_t)``;
            ``"karras_sigma"`` also works well).
        t_start: Start time (default ``sde.T``).
        t_end: End time (default ``sde.eps``).
        rho: Karras-grid exponent.
        denoise: Finish with Tweedie's denoising step (one more evaluation).
        data_std: Std of the data assumed by the starting law.
        lower_order_final: First-order final step (see :func:`dpm_solver_pp_2m`).
    """

    solver = staticmethod(dpm_solver_pp_2m)
    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 20
    stochastic: ClassVar[bool] = False
    accepts_noise: ClassVar[bool] = False

    def __init__(self, steps: int | None = None, grid: str = "log_snr", t_start: float | None = None,
                 t_end: float | None = None, rho: float = 7.0, denoise: bool = True, data_std: float = 0.0,
                 lower_order_final: bool = True) -> None:
        super().__init__(steps, grid, t_start, t_end, rho, denoise, data_std, lower_order_final=bool(lower_order_final))
