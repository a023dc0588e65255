"""Predictor–corrector sampling (Song et al. 2021): Langevin corrector + reverse-SDE predictor."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE, expand_as_batch
from .base import Callback, GridSampler, NoiseSource, StepInfo

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


def predictor_corrector(score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource,
                        callback: Callback | None = None, snr: float = 0.16, n_corrector: int = 1) -> Tensor:
    """At each grid time: ``n_corrector`` Langevin steps, then one Euler–Maruyama predictor step.

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: Forward SDE.
        x: ``(batch, *event)`` state at ``ts[0]``.
        ts: ``(steps + 1,)`` decreasing times.
        noise: Source of randomness.
        callback: Called after each step.
        snr: Langevin signal-to-noise ratio.
        n_corrector: Corrector steps per grid time.

    Returns:
        ``(batch, *event)`` state at ``ts[-1]``.
    """
    n = len(ts) - 1
    nfe = 0
    for i in range(n):
        t_cur, t_next = float(ts[i]), float(ts[i + 1])
        tb = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        for _ in range(n_corrector):
            x = langevin_corrector(score_fn, x, tb, snr=snr, noise=noise)
            nfe += 1
        drift = sde.reverse_drift(x, tb, score_fn(x, tb))
        nfe += 1
        g = expand_as_batch(sde.diffusion(tb), x)
        x = x + drift * (t_next - t_cur) + g * noise.increment(t_cur, t_next, x)
        if callback is not None:
            callback(StepInfo(i, n, t_cur, t_next, x, nfe))
    return x


class PredictorCorrector(GridSampler):
    """Reverse-SDE Euler–Maruyama predictor with a Langevin corrector.

    Args:
        steps: Default number of predictor steps.
        snr: Langevin signal-to-noise ratio (0.16 in Song et al. for VE on CIFAR-10).
        n_corrector: Corrector steps per predictor step.
        grid: Time grid.
        t_start: Start time.
        t_end: End time.
        rho: Karras-grid exponent.
        denoise: Finish with Tweedie's denoising step.
        data_std: Std of the data assumed by the starting law.
    """

    solver = staticmethod(predictor_corrector)
    default_steps: ClassVar[int] = 500

    def __init__(self, steps: int | None = None, snr: float = 0.16, n_corrector: int = 1, grid: str = "uniform",
                 t_start: float | None = None, t_end: float | None = None, rho: float = 7.0, denoise: bool = True,
                 data_std: float = 0.0) -> None:
        if not snr > 0:
            raise ConfigError(format_error("snr", "a positive float", repr(snr)))
        if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
            raise ConfigError(format_error("n_corrector", "an integer >= 0", repr(n_corrector)))
        super().__init__(steps, grid, t_start, t_end, rho, denoise, data_std, snr=float(snr), n_corrector=n_corrector)

    def nfe(self, steps: int | None = None) -> int:
        n = self.steps if steps is None else steps
        return n * (1 + self.options["n_corrector"]) + int(self.denoise)
