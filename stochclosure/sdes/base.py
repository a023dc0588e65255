"""The SDE interface: forward noising processes ``dx = f(x, t) dt + g(t) dW``."""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor

from .._types import check_generator
from ..config import Configurable
from ..errors import ConfigError, format_error

__all__ = ["AbstractSDE", "expand_as_batch"]


def expand_as_batch(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor ``(batch,)`` to broadcast against ``x`` ``(batch, *event)``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


class AbstractSDE(Configurable, abc.ABC):
    """A forward (noising) SDE with a Gaussian transition kernel.

    The marginal of ``x_t`` given ``x_0`` is ``N(alpha_t * x_0, sigma_t^2 I)``: every built-in
    SDE (VE, VP, sub-VP) has a linear drift ``f(t) x`` and state-independent diffusion ``g(t)``.
    Times are tensors ``t`` of shape ``(batch,)`` in ``[eps, T]``.

    Capabilities (class attributes):
        family: ``"ve"``, ``"vp"`` or ``"subvp"`` (other plugins may add more).
        additive_noise: ``g`` depends on ``t`` only (lets torchsde use cheaper schemes).
        linear_drift: ``f(x, t) = drift_coefficient(t) * x``.

    Attributes:
        T: Final diffusion time.
        eps: Smallest diffusion time used by samplers and training.
    """

    component_kind: ClassVar[str] = "sde"
    family: ClassVar[str] = "custom"
    additive_noise: ClassVar[bool] = True
    linear_drift: ClassVar[bool] = True

    T: float = 1.0
    eps: float = 1e-3

    def _check_times(self, T: float, eps: float) -> None:
        if not (isinstance(T, (int, float)) and T > 0 and math.isfinite(T)):
            raise ConfigError(format_error("T", "a positive finite float", repr(T)))
        if not (isinstance(eps, (int, float)) and 0 < eps < T):
            raise ConfigError(format_error("eps", f"a float in (0, T={T})", repr(eps)))

    # -- the process ----------------------------------------------------------------------------
    @classmethod
    def example(cls) -> "AbstractSDE":
        """A small instance for contract tests and docs (default ``cls()``)."""
        return cls()

    @abc.abstractmethod
    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and std of the transition kernel.

        Args:
            t: ``(batch,)`` diffusion times.

        Returns:
            ``(alpha_t, sigma_t)``, each ``(batch,)``, with ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2)``.
        """

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift ``f(x, t)``; x ``(batch, *event)``, t ``(batch,)``; returns like ``x``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``, shape ``(batch,)``."""

    # -- derived quantities ---------------------------------------------------------------------
    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of ``x_t | x_0``.

        Args:
            x0: ``(batch, *event)`` clean samples.
            t: ``(batch,)`` diffusion times.

        Returns:
            ``(mean, std)``: mean like ``x0``; std ``(batch, 1, ..., 1)`` broadcastable to ``x0``.
        """
        alpha, sigma = self.marginal_coefficients(t)
        return expand_as_batch(alpha, x0) * x0, expand_as_batch(sigma, x0)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda_t = log(alpha_t / sigma_t)``, decreasing in ``t``; shape ``(batch,)``."""
        alpha, sigma = self.marginal_coefficients(t)
        return torch.log(alpha) - torch.log(sigma)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Invert :meth:`log_snr` (bisection on ``[0, T]``; subclasses give closed forms).

        Args:
            lam: ``(n,)`` log signal-to-noise ratios.

        Returns:
            ``(n,)`` times with ``log_snr(t) == lam``.
        """
        lam64 = lam.double()
        lo = torch.full_like(lam64, 1e-12)
        hi = torch.full_like(lam64, float(self.T))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam64  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """``f(t)`` with ``drift(x, t) = f(t) * x``; shape ``(batch,)``."""
        one = torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device)
        return self.drift(one, t)[:, 0]

    def prior_std(self, t: Tensor, data_std: float = 0.0) -> Tensor:
        """Std of the sampler's starting law at time ``t``: ``sqrt(alpha^2 data_std^2 + sigma^2)``.

        ``data_std = 0`` is the usual choice at ``t = T``; a truncated start (``t < T``) is more
        accurate with the data's own std (1 after per-channel normalisation).
        """
        alpha, sigma = self.marginal_coefficients(t)
        return torch.sqrt(alpha**2 * data_std**2 + sigma**2)

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        t: float | None = None,
        data_std: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw the sampler's starting point ``x_t ~ N(0, prior_std(t)^2 I)``.

        Args:
            shape: ``(batch, *event)``.
            t: Start time (default ``T``).
            data_std: Assumed std of the data (see :meth:`prior_std`).
            generator: Torch generator for reproducibility.
            dtype: Output dtype.
            device: Output device.

        Returns:
            ``(batch, *event)`` tensor.
        """
        t_val = float(self.T if t is None else t)
        tt = torch.full((shape[0],), t_val, dtype=torch.float64)
        std = self.prior_std(tt, data_std).to(dtype)
        z = torch.randn(shape, generator=check_generator(generator), dtype=dtype, device=device)
        return z * expand_as_batch(std.to(z.device), z)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE ``f - g^2 * score`` (integrated backwards in ``t``)."""
        g = expand_as_batch(self.diffusion(t), x)
        return self.drift(x, t) - g**2 * score

    def probability_flow_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Velocity of the probability-flow ODE ``f - g^2 * score / 2``."""
        g = expand_as_batch(self.diffusion(t), x)
        return self.drift(x, t) - 0.5 * g**2 * score

    def denoise(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Tweedie's posterior mean ``E[x_0 | x_t] = (x + sigma_t^2 score) / alpha_t``."""
        alpha, sigma = self.marginal_coefficients(t)
        return (x + expand_as_batch(sigma, x) ** 2 * score) / expand_as_batch(alpha, x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "config", {}).items())
        return f"{type(self).__name__}({args})"
