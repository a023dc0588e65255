"""Use a k-diffusion-style denoiser ``D(x, sigma)`` as the score of an SDE.

k-diffusion, EDM and most diffusers pipelines wrap their networks as a *denoiser*: given a
point ``x = x_0 + sigma z`` of the variance-exploding law at noise level ``sigma``, ``D(x, sigma)``
estimates ``E[x_0 | x]``. Tweedie's formula turns it into the score of that law,
``score = (D(x, sigma) - x) / sigma^2``. For an SDE with kernel ``N(alpha_t x_0, sigma_t^2 I)``
(VP, sub-VP) the scaled point ``x / alpha_t`` is such a VE point at noise level
``sigma_t / alpha_t``, so ``score(x, t) = (alpha_t D(x / alpha_t, sigma_t / alpha_t) - x) / sigma_t^2``;
for a VE SDE (``alpha_t = 1``) this is the formula above with ``sigma = sigma_t``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE, expand_as_batch

__all__ = ["DenoiserScore", "Denoiser"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``D(x, sigma) -> E[x_0 | x]``: ``x`` ``(batch, *event)``, ``sigma`` ``(batch,)`` noise levels."""


class DenoiserScore:
    """The score ``score_fn(x, t)`` of ``sde`` read off a denoiser ``D(x, sigma)`` by Tweedie's formula.

    Any sampler takes it as its ``score_fn``; with a VE SDE and ``grid={"sigmas": ...}`` a
    k-diffusion model and schedule run unchanged.

    Args:
        denoiser: ``D(x, sigma)``, ``x`` ``(batch, *event)`` at noise level ``sigma`` ``(batch,)``
            (the variance-exploding parameterisation of k-diffusion and EDM), returns like ``x``.
        sde: The SDE whose score is wanted (its ``marginal_coefficients`` give ``alpha_t, sigma_t``).

    Example:
        >>> import torch
        >>> import stochclosure as sc
        >>> from stochclosure.testing import assert_close
        >>> sde = sc.resolve("sde", "ve")
        >>> score = DenoiserScore(lambda x, s: x / (1 + s[:, None] ** 2), sde)  # data N(0, 1)
        >>> x, t = torch.ones(2, 3), torch.full((2,), 0.5)
        >>> var = 1 + sde.marginal_coefficients(t)[1] ** 2  # the noised law is N(0, 1 + sigma_t^2)
        >>> assert_close(score(x, t), -x / var[:, None], rtol=1e-6, what="score of N(0, 1 + sigma_t^2)")
    """

    def __init__(self, denoiser: Denoiser, sde: AbstractSDE) -> None:
        if not callable(denoiser):
            raise ConfigError(format_error("denoiser", "a callable D(x, sigma)", type(denoiser).__name__))
        self.denoiser, self.sde = denoiser, sde

    def noise_level(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha_t, sigma_t, sigma_t / alpha_t)`` at times ``t`` ``(batch,)``."""
        alpha, sigma = self.sde.marginal_coefficients(t)
        return alpha, sigma, sigma / alpha

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(x)`` ``(batch, *event)`` at times ``t`` ``(batch,)``."""
        alpha, sigma, level = self.noise_level(t)
        a = expand_as_batch(alpha.to(x.dtype), x)
        d = self.denoiser(x / a, level.to(x.dtype))
        return (a * d - x) / expand_as_batch(sigma.to(x.dtype), x) ** 2
