"""Variance-exploding SDEs (Song et al. 2021): ``dx = g(t) dW``, ``alpha_t = 1``."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, format_error
from .base import AbstractSDE, expand_as_batch

__all__ = ["VESDE", "ExpVESDE"]


class _GeometricVE(AbstractSDE):
    """Shared maths of ``sigma_t^2 = s0^2 (r^(2t) - 1)``, ``g(t) = s0 r^t sqrt(2 ln r)``.

    Both public VE classes are this law with different parameterisations; the variance is the
    exact integral of ``g^2`` from 0, so ``x_0`` itself carries no noise.
    """

    family: ClassVar[str] = "ve"
    _s0: float
    _log_r: float

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t64 = t.double()
        sigma = self._s0 * torch.sqrt(torch.expm1(2.0 * t64 * self._log_r))
        return torch.ones_like(t64).to(t.dtype), sigma.to(t.dtype)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        t64 = t.double()
        return (self._s0 * torch.exp(t64 * self._log_r) * math.sqrt(2.0 * self._log_r)).to(t.dtype)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam64 = lam.double()
        # sigma = exp(-lam) = s0 sqrt(r^(2t) - 1)  =>  t = log1p(exp(-2 lam) / s0^2) / (2 ln r)
        t = torch.log1p(torch.exp(-2.0 * lam64) / self._s0**2) / (2.0 * self._log_r)
        return t.to(lam.dtype)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Time at which the marginal std equals ``sigma`` (shape preserved)."""
        s64 = sigma.double()
        return (torch.log1p((s64 / self._s0) ** 2) / (2.0 * self._log_r)).to(sigma.dtype)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        return -(expand_as_batch(self.diffusion(t), x) ** 2) * score


class VESDE(_GeometricVE):
    """Variance-exploding SDE with a geometric noise schedule (Song et al. 2021, SMLD).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` and ``g(t) = sigma(t) sqrt(2 ln(sigma_max /
    sigma_min))``; the exact marginal std is ``sqrt(sigma(t)^2 - sigma_min^2)``.

    Args:
        sigma_min: Noise scale at ``t = 0``.
        sigma_max: Noise scale at ``t = 1``; should exceed the data's largest pairwise distance.
        T: Final time.
        eps: Smallest time used by samplers and training.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5) -> None:
        if not (0 < sigma_min < sigma_max):
            raise ConfigError(format_error("sigma_min", f"0 < sigma_min < sigma_max={sigma_max}", repr(sigma_min)))
        self._check_times(T, eps)
        self.sigma_min, self.sigma_max, self.T, self.eps = float(sigma_min), float(sigma_max), float(T), float(eps)
        self._s0 = self.sigma_min
        self._log_r = math.log(self.sigma_max / self.sigma_min)


class ExpVESDE(_GeometricVE):
    """The research code's variance-exploding SDE: ``g(t) = sigma^t``.

    Then ``sigma_t^2 = (sigma^(2t) - 1) / (2 ln sigma)`` (REFERENCE §3: sigma = 26, so
    ``sigma_1 ~ 10.2`` and ``sigma_0.1 ~ 0.375``).

    Args:
        sigma: Base of the diffusion coefficient (> 1).
        T: Final time.
        eps: Smallest time used by samplers and training.
    """

    def __init__(self, sigma: float = 26.0, T: float = 1.0, eps: float = 1e-3) -> None:
        if not sigma > 1.0:
            raise ConfigError(format_error("sigma", "a float > 1", repr(sigma)))
        self._check_times(T, eps)
        self.sigma, self.T, self.eps = float(sigma), float(T), float(eps)
        self._log_r = math.log(self.sigma)
        self._s0 = 1.0 / math.sqrt(2.0 * self._log_r)
