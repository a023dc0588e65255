"""Denoising score matching (Vincent 2011; Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._types import Conditioning, check_tensor
from .errors import ConfigError, format_error
from .sdes.base import AbstractSDE, expand_as_batch

__all__ = ["dsm_loss", "WEIGHTINGS", "sample_times"]

WEIGHTINGS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    # lambda(t) multiplying ||score - target||^2; "sigma2" makes the target a unit-variance noise.
    "sigma2": lambda alpha, sigma, g: sigma**2,
    "likelihood": lambda alpha, sigma, g: g**2,
    "none": lambda alpha, sigma, g: torch.ones_like(sigma),
}


def sample_times(sde: AbstractSDE, batch: int, t_range: tuple[float, float] | None = None, *,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """Uniform diffusion times in ``t_range`` (default ``[eps, T]``), shape ``(batch,)``."""
    lo, hi = (sde.eps, sde.T) if t_range is None else t_range
    if not (0 < lo < hi <= sde.T + 1e-12):
        raise ConfigError(format_error("t_range", f"0 < t_min < t_max <= T={sde.T}", repr(t_range),
                                       "match the sampler's range, e.g. (sde.eps, 0.1) for a truncated start"))
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(dtype=dtype, device=device)


def dsm_loss(score_op: Callable[..., Tensor], sde: AbstractSDE, x0: Tensor, cond: Conditioning | None = None, *,
             t_range: tuple[float, float] | None = None, weighting: str | Callable[..., Tensor] = "sigma2",
             generator: torch.Generator | None = None, t: Tensor | None = None, z: Tensor | None = None,
             reduce: bool = True) -> Tensor:
    """Denoising score matching loss ``E_t E_z lambda(t) ||s(alpha x0 + sigma z, t) + z / sigma||^2``.

    Args:
        score_op: ``score_op(x, t, cond)``.
        sde: Forward SDE.
        x0: ``(batch, *event)`` clean samples.
        cond: Condition with batch ``batch``.
        t_range: ``(t_min, t_max)`` of the uniform time law; should match the sampler's range.
        weighting: ``"sigma2"`` (default), ``"likelihood"`` (``g^2``), ``"none"`` or a callable
            ``(alpha, sigma, g) -> lambda`` on ``(batch,)`` tensors.
        generator: Seeds ``t`` and ``z``.
        t: Explicit times ``(batch,)`` instead of sampling.
        z: Explicit noise like ``x0``.
        reduce: Mean over the batch (else per-sample losses ``(batch,)``).

    Returns:
        Scalar loss (or ``(batch,)``), averaged over event elements.
    """
    check_tensor("x0", x0, min_rank=2)
    b = x0.shape[0]
    if isinstance(weighting, str):
        if weighting not in WEIGHTINGS:
            raise ConfigError(format_error("weighting", f"one of {sorted(WEIGHTINGS)} or a callable", repr(weighting)))
        wfn: Callable[..., Tensor] = WEIGHTINGS[weighting]
    else:
        wfn = weighting
    if t is None:
        t = sample_times(sde, b, t_range, generator=generator, dtype=x0.dtype, device=x0.device)
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha, sigma = sde.marginal_coefficients(t)
    s = expand_as_batch(sigma, x0)
    xt = expand_as_batch(alpha, x0) * x0 + s * z
    score = score_op(xt, t, cond)
    per = ((score + z / s) ** 2).reshape(b, -1).mean(dim=1)
    per = per * wfn(alpha, sigma, sde.diffusion(t)).to(per.dtype)
    return per.mean() if reduce else per


