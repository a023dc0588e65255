"""Decreasing diffusion-time grids ``(steps + 1,)`` in float64, from ``t_start`` to ``t_end``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..sdes.base import AbstractSDE

__all__ = ["uniform", "karras", "karras_sigma", "log_snr", "make_grid", "GRIDS"]


def uniform(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Uniform in ``t``."""
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def _rho_ramp(a: float, b: float, steps: int, rho: float) -> Tensor:
    r = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return (a ** (1.0 / rho) + r * (b ** (1.0 / rho) - a ** (1.0 / rho))) ** rho


def karras(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """``t_i = (t_start^(1/rho) + i/n (t_end^(1/rho) - t_start^(1/rho)))^rho``: the research code's grid."""
    return _rho_ramp(t_start, t_end, steps, rho)


def karras_sigma(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) rho-spacing of the scaled noise level ``sigma_t / alpha_t``, mapped back to ``t``."""
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    s_hi, s_lo = torch.exp(-sde.log_snr(ends)).tolist()
    sig = _rho_ramp(s_hi, s_lo, steps, rho)
    ts = sde.t_from_log_snr(-torch.log(sig))
    ts[0], ts[-1] = t_start, t_end
    return ts


def log_snr(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Uniform in ``lambda_t = log(alpha_t / sigma_t)`` (DPM-Solver's default)."""
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    lam = sde.log_snr(ends)
    ts = sde.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = t_start, t_end
    return ts


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform,
    "karras": karras,
    "karras_sigma": karras_sigma,
    "log_snr": log_snr,
}


def make_grid(name: str, sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Build grid ``name`` (a key of :data:`GRIDS`)."""
    return GRIDS[name](sde, t_start, t_end, steps, rho)
