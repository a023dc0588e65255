"""Variance-preserving and sub-variance-preserving SDEs (Song et al. 2021) with linear beta."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, format_error
from .base import AbstractSDE, expand_as_batch

__all__ = ["VPSDE", "SubVPSDE"]


class _LinearBeta(AbstractSDE):
    """``beta(t) = beta_min + t (beta_max - beta_min)``, drift ``-beta(t) x / 2``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3) -> None:
        if not (0 <= beta_min < beta_max):
            raise ConfigError(format_error("beta_min", f"0 <= beta_min < beta_max={beta_max}", repr(beta_min)))
        self._check_times(T, eps)
        self.beta_min, self.beta_max, self.T, self.eps = float(beta_min), float(beta_max), float(T), float(eps)

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)``, shape ``(batch,)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta``, shape ``(batch,)``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_from_integrated_beta(self, b: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        return (torch.sqrt(self.beta_min**2 + 2.0 * d * b) - self.beta_min) / d

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * expand_as_batch(self.beta(t), x) * x

    def drift_coefficient(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t.double()))


class VPSDE(_LinearBeta):
    """Variance-preserving SDE (DDPM in continuous time).

    ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW``; ``alpha_t = exp(-B(t)/2)``,
    ``sigma_t^2 = 1 - alpha_t^2``.

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        T: Final time.
        eps: Smallest time used by samplers and training.
    """

    family: ClassVar[str] = "vp"

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t.double())
        return torch.exp(-0.5 * b).to(t.dtype), torch.sqrt(-torch.expm1(-b)).to(t.dtype)

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # sigma^2 / alpha^2 = e^B - 1 = e^(-2 lam)
        b = torch.log1p(torch.exp(-2.0 * lam.double()))
        return self._t_from_integrated_beta(b).to(lam.dtype)


class SubVPSDE(_LinearBeta):
    """Sub-variance-preserving SDE (Song et al. 2021).

    Same drift as VP, ``g(t)^2 = beta(t) (1 - exp(-2 B(t)))``; ``alpha_t = exp(-B/2)``,
    ``sigma_t = 1 - exp(-B)``: the variance is always below the VP one.

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        T: Final time.
        eps: Smallest time used by samplers and training.
    """

    family: ClassVar[str] = "subvp"

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t.double())
        return torch.exp(-0.5 * b).to(t.dtype), (-torch.expm1(-b)).to(t.dtype)

    def diffusion(self, t: Tensor) -> Tensor:
        b = self.integrated_beta(t.double())
        return torch.sqrt(self.beta(t.double()) * (-torch.expm1(-2.0 * b))).to(t.dtype)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # sigma / alpha = 2 sinh(B / 2) = e^(-lam)
        b = 2.0 * torch.asinh(0.5 * torch.exp(-lam.double()))
        return self._t_from_integrated_beta(b).to(lam.dtype)
