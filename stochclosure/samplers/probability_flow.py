"""Heun's method on the probability-flow ODE (Song et al. 2021; Karras et al. 2022, Alg. 1)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..sdes.base import AbstractSDE
from .base import Callback, GridSampler, NoiseSource, StepInfo

__all__ = ["probability_flow_heun", "ProbabilityFlowHeun"]


def probability_flow_heun(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource,
                          callback: Callback | None = None) -> Tensor:
    """Integrate ``dx/dt = f - g^2 score / 2`` backwards over ``ts`` with Heun's rule (order 2).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times.
        noise: Unused (deterministic); part of the shared signature.
        callback: Called after each step.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    n = len(ts) - 1
    nfe = 0

    def velocity(x_: Tensor, t_: float) -> Tensor:
        tb = torch.full((x_.shape[0],), t_, dtype=x_.dtype, device=x_.device)
        return sde.probability_flow_drift(x_, tb, score_fn(x_, tb))

    for i in range(n):
        t_cur, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t_cur
        d1 = velocity(x, t_cur)
        x_euler = x + h * d1
        d2 = velocity(x_euler, t_next)
        x = x + 0.5 * h * (d1 + d2)
        nfe += 2
        if callback is not None:
            callback(StepInfo(i, n, t_cur, t_next, x, nfe))
    return x


class ProbabilityFlowHeun(GridSampler):
    """Deterministic probability-flow ODE sampler, Heun's second-order rule, two evaluations per step.

    Args:
        steps: Default number of steps.
        grid: Time grid (``"karras_sigma"`` is usually best for few steps).
        t_start: Start time.
        t_end: End time.
        rho: Karras-grid exponent.
        denoise: Finish with Tweedie's denoising step.
        data_std: Std of the data assumed by the starting law.
    """

    solver = staticmethod(probability_flow_heun)
    nfe_per_step: ClassVar[int] = 2
    default_steps: ClassVar[int] = 50
    stochastic: ClassVar[bool] = False
    accepts_noise: ClassVar[bool] = False

    def __init__(self, steps: int | None = None, grid: str = "uniform", t_start: float | None = None,
                 t_end: float | None = None, rho: float = 7.0, denoise: bool = True, data_std: float = 0.0) -> None:
        super().__init__(steps, grid, t_start, t_end, rho, denoise, data_std)
