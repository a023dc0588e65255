"""Consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1): one or a few evaluations.

A consistency function ``f(x_t, t)`` maps any point of a probability-flow ODE trajectory to the
trajectory's end ``x_0``. One step draws ``x_T`` from the prior and returns ``f(x_T, T)``; more
steps re-noise the estimate to a smaller time ``tau`` through the forward marginal,
``x = alpha_tau f + sigma_tau z``, and apply ``f`` again. The sampler reads ``f`` off the score by
Tweedie's formula, ``f(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t``, so it works with any score
operator, but it draws from the model's law only when that score was *distilled* to be a
consistency function (:class:`~stochclosure.scores.consistency.ConsistencyScore`, ``stochclosure distill``).
With an ordinary score one step returns the posterior mean ``E[x_0 | x_T]`` (a blurred draw).
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

__all__ = ["consistency_sampling", "ConsistencySampler"]


class ConsistencySampler(GridSampler):
    """One- or few-step sampler of consistency-distilled models (Song et al. 2023, Alg. 1).

    ``nfe = steps``. Evaluation times are the first ``steps`` points of the grid from ``t_start``
    (default ``T``) to ``t_end``: one step evaluates at ``t_start`` only; two steps at ``t_start``
    and the grid's middle point (e.g. ``t = 0.31`` for the default VP SDE and ``"karras_sigma"``);
    between evaluations the estimate is re-noised to the next grid time (the grid's last point is
    unused). Pass ``times`` to fix the evaluation times instead. ``needs_distilled_score``: with an
    ordinary score even many steps under-disperse (posterior means re-noised: std 0.14 instead
    of 0.2 on the contract suite's Gaussian), so the contract suite skips its moment check.
    Also takes the common arguments of :class:`~stochclosure.samplers.base.GridSampler`
    (default 1 step on the ``"karras_sigma"`` grid; ``denoise`` must stay false).

    Args:
        steps: Number of evaluations (default 1).
        times: Explicit decreasing evaluation times (the spelling distilled checkpoints record;
            overrides ``steps``/``grid``/``t_start``).
    """

    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 1
    default_grid: ClassVar[str] = "karras_sigma"
    default_denoise: ClassVar[bool] = False
    needs_distilled_score: ClassVar[bool] = True

    def __init__(self, steps: int | None = None, *, times: list[float] | None = None, **common: Any) -> None:
        if common.get("denoise"):
            raise ConfigError(format_error("denoise", "false (a consistency function already returns x_0)", "true"))
        self.times = None if times is None else [float(v) for v in times]
        if self.times is not None:
            if not self.times or not all(math.isfinite(v) and v > 0 for v in self.times) or any(
                    a <= b for a, b in zip(self.times, self.times[1:])):
                raise ConfigError(format_error("times", "strictly decreasing finite diffusion times > 0",
                                               repr(times), "e.g. times=[1.0, 0.3]"))
            steps = len(self.times)
            common["t_start"] = self.times[0]
        super().__init__(steps, **common)

    def time_grid(self, sde: AbstractSDE, steps: int) -> Tensor:
        if self.times is not None and steps == len(self.times):
            t_end = sde.eps if self.t_end is None else self.t_end
            return torch.tensor([*self.times, min(t_end, self.times[-1] / 2)], dtype=torch.float64)
        return super().time_grid(sde, steps)

    def init(self, state: SolverState, times: list[float]) -> SolverState:
        """Keep the noised point ``x_t`` apart from the estimate ``state.x`` of ``x_0``."""
        state.memory["x_t"] = state.x
        return state

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        x, sde = state.memory["x_t"], state.sde
        tb = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        x0 = sde.denoise(x, tb, score_fn(x, tb))
        if state.index < state.n_steps - 1:
            alpha, sigma = sde.marginal_coefficients(torch.full((1,), t_next, dtype=torch.float64))
            state.memory["x_t"] = float(alpha[0]) * x0 + float(sigma[0]) * noise.normal(x0)
        state.x = x0
        return state


def consistency_sampling(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *,
                         noise: NoiseSource | None = None, callback: Callback | None = None) -> Tensor:
    """Multistep consistency sampling over the evaluation times ``ts[:-1]`` (the shared driver).

    Args:
        score_fn: ``score_fn(x, t)`` of a consistency-distilled model.
        sde: Forward SDE.
        x: ``(batch, *event)`` start at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times; the function is evaluated at ``ts[0..steps-1]``
            and the estimate re-noised to ``ts[i + 1]`` between evaluations (``ts[-1]`` is unused).
        noise: Source of the re-noising draws (default: torch's global generator).
        callback: Called after each evaluation.

    Returns:
        ``(batch, *event)`` the last estimate of ``x_0``.
    """
    return ConsistencySampler(steps=len(ts) - 1).integrate(
        score_fn, sde, x, ts, noise=GaussianNoise() if noise is None else noise, callback=callback)
