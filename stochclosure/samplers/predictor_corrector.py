"""Predictor–corrector sampling (Song et al. 2021): Langevin corrector + reverse-SDE predictor."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE, expand_as_batch
from .base import Callback, GaussianNoise, GridSampler, NoiseSource, SolverState

__all__ = ["langevin_corrector", "predictor_corrector", "PredictorCorrector"]


def _norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=-1)


def langevin_corrector(score_fn: ScoreFn, x: Tensor, tb: Tensor, *, snr: float, noise: NoiseSource) -> Tensor:
    """One Langevin MCMC step at fixed ``t`` with step size set by the target signal-to-noise ratio.

    ``eps = 2 (snr mean||z|| / mean||score||)^2`` with norms averaged over the batch, as in Song
    et al. (2021): a per-sample ratio is unstable for small events (``||score||`` can be near 0),
    so all members share one step size; ``x <- x + eps score + sqrt(2 eps) z``.
    """
    s = score_fn(x, tb)
    z = noise.normal(x)
    eps = 2.0 * (snr * _norm(z).mean() / _norm(s).mean().clamp_min(1e-12)) ** 2
    return x + eps * s + torch.sqrt(2.0 * eps) * z


class PredictorCorrector(GridSampler):
    """Reverse-SDE Euler–Maruyama predictor with a Langevin corrector.

    At each grid time: ``n_corrector`` Langevin steps, then one Euler–Maruyama predictor step;
    ``nfe = steps (1 + n_corrector) + denoise``. Also takes the common arguments of
    :class:`~stochclosure.samplers.base.GridSampler` (default 500 steps, uniform grid).

    Args:
        steps: Default number of predictor steps.
        snr: Langevin signal-to-noise ratio (0.16 in Song et al. for VE on CIFAR-10).
        n_corrector: Corrector steps per predictor step.
    """

    default_steps: ClassVar[int] = 500

    def __init__(self, steps: int | None = None, *, snr: float = 0.16, n_corrector: int = 1, **common: Any) -> None:
        if not (isinstance(snr, (int, float)) and not isinstance(snr, bool) and 0 < snr < float("inf")):
            raise ConfigError(format_error("snr", "a positive finite float", repr(snr)))
        if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
            raise ConfigError(format_error("n_corrector", "an integer >= 0", repr(n_corrector)))
        super().__init__(steps, **common)
        self.snr, self.n_corrector = float(snr), n_corrector

    def nfe(self, steps: int | None = None) -> int:
        return self._steps(steps) * (1 + self.n_corrector) + int(self.denoise)

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        x, sde = state.x, state.sde
        tb = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        for _ in range(self.n_corrector):
            x = langevin_corrector(score_fn, x, tb, snr=self.snr, noise=noise)
        drift = sde.reverse_drift(x, tb, score_fn(x, tb))
        g = expand_as_batch(sde.diffusion(tb), x)
        state.x = x + drift * (t_next - t_cur) + g * noise.increment(t_cur, t_next, x)
        return state


def predictor_corrector(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *,
                        noise: NoiseSource | None = None, callback: Callback | None = None, snr: float = 0.16,
                        n_corrector: int = 1) -> Tensor:
    """Predictor–corrector steps over ``ts`` (the shared driver, no denoising).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times.
        noise: Source of randomness (default: torch's global generator).
        callback: Called after each step.
        snr: Langevin signal-to-noise ratio.
        n_corrector: Corrector steps per grid time.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    sampler = PredictorCorrector(steps=len(ts) - 1, snr=snr, n_corrector=n_corrector, denoise=False)
    return sampler.integrate(score_fn, sde, x, ts, noise=GaussianNoise() if noise is None else noise,
                             callback=callback)
