"""Heun's method on the probability-flow ODE (Song et al. 2021; Karras et al. 2022, Alg. 1)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..sdes.base import AbstractSDE
from .base import Callback, GaussianNoise, GridSampler, NoiseSource, SolverState

__all__ = ["probability_flow_heun", "ProbabilityFlowHeun"]


class ProbabilityFlowHeun(GridSampler):
    """Deterministic probability-flow ODE sampler, Heun's second-order rule, two evaluations per step.

    Integrates ``dx/dt = f - g^2 score / 2`` backwards. Takes the common arguments of
    :class:`~stochclosure.samplers.base.GridSampler` (default 50 steps on a uniform grid;
    ``grid="karras_sigma"`` is usually best for few steps).
    """

    nfe_per_step: ClassVar[int] = 2
    default_steps: ClassVar[int] = 50
    stochastic: ClassVar[bool] = False
    accepts_noise: ClassVar[bool] = False

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        x, sde = state.x, state.sde

        def velocity(x_: Tensor, t_: float) -> Tensor:
            tb = torch.full((x_.shape[0],), t_, dtype=x_.dtype, device=x_.device)
            return sde.probability_flow_drift(x_, tb, score_fn(x_, tb))

        h = t_next - t_cur
        d1 = velocity(x, t_cur)
        d2 = velocity(x + h * d1, t_next)
        state.x = x + 0.5 * h * (d1 + d2)
        return state


def probability_flow_heun(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *,
                          noise: NoiseSource | None = None, callback: Callback | None = None) -> Tensor:
    """Heun steps of the probability-flow ODE over ``ts`` (the shared driver, no denoising).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times.
        noise: Unused (deterministic).
        callback: Called after each step.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    return ProbabilityFlowHeun(steps=len(ts) - 1, denoise=False).integrate(
        score_fn, sde, x, ts, noise=GaussianNoise() if noise is None else noise, callback=callback)
