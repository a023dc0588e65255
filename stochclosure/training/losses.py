"""Denoising score matching (Vincent 2011; Song et al. 2021) and the law of the training noise levels.

Which noise levels training visits matters as much as the loss: a sampler with a truncated start
or a Karras grid spends its last, decisive steps at small ``sigma_t / alpha_t``, while uniform
``t`` under a VP SDE puts most training at large noise-to-signal ratios. Two time laws:

* ``"uniform"``: ``t ~ U(t_min, t_max)`` (Song et al. 2021).
* ``{"type": "lognormal", "p_mean": -1.2, "p_std": 1.2}``: the noise-to-signal ratio
  ``s = sigma_t / alpha_t`` is log-normal, ``ln s ~ N(p_mean, p_std^2)`` (Karras et al. 2022, EDM),
  truncated to the ratios of ``[t_min, t_max]`` and mapped back to ``t`` through the SDE's
  log-SNR; any SDE (VE, VP, sub-VP) then trains on the same noise levels.

Both use one uniform number per item (inverse-CDF sampling), so a run's random stream does not
depend on the law's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._types import Conditioning, check_tensor
from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE, expand_as_batch

__all__ = ["dsm_loss", "WEIGHTINGS", "TIME_LAWS", "sample_times", "check_time_law"]

WEIGHTINGS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    # lambda(t) multiplying ||score - target||^2; "sigma2" makes the target a unit-variance noise.
    "sigma2": lambda alpha, sigma, g: sigma**2,
    "likelihood": lambda alpha, sigma, g: g**2,
    "none": lambda alpha, sigma, g: torch.ones_like(sigma),
}


TIME_LAWS = ("uniform", "lognormal")


def check_time_law(law: Any) -> dict[str, Any]:
    """Validate a time law (``"uniform"``, ``"lognormal"`` or ``{"type": ..., **options}``).

    Returns:
        The normalised spec ``{"type": ..., **options}`` with defaults filled in.

    Raises:
        ConfigError: naming ``time_law`` (unknown type, unknown or non-finite option).
    """
    spec = {"type": law} if isinstance(law, str) else dict(law) if isinstance(law, dict) else None
    if spec is None or spec.get("type") not in TIME_LAWS:
        raise ConfigError(format_error("time_law", f"one of {list(TIME_LAWS)} or {{'type': ..., options}}", repr(law)))
    if spec["type"] == "uniform":
        if len(spec) > 1:
            raise ConfigError(format_error("time_law", "no options for 'uniform'", repr(law)))
        return spec
    out = {"type": "lognormal", "p_mean": -1.2, "p_std": 1.2}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in out:
            raise ConfigError(format_error(f"time_law.{key}", "p_mean or p_std", repr(key)))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(format_error(f"time_law.{key}", "a finite number", repr(value)))
        out[key] = float(value)
    if not out["p_std"] > 0:
        raise ConfigError(format_error("time_law.p_std", "a positive std", repr(out["p_std"])))
    return out


def sample_times(sde: AbstractSDE, batch: int, t_range: tuple[float, float] | None = None, *,
                 law: Any = "uniform", generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """Diffusion times in ``t_range`` (default ``[eps, T]``) drawn from a time law, shape ``(batch,)``.

    Args:
        sde: The forward SDE.
        batch: Number of times.
        t_range: ``(t_min, t_max)``.
        law: ``"uniform"`` in ``t``, or ``"lognormal"`` in ``sigma_t / alpha_t`` (see the module
            docstring), as a name or a ``{"type": ..., **options}`` dict.
        generator: Seeds the draw (one uniform number per item).
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        ``(batch,)`` times.

    Example:
        >>> import torch, stochclosure as sc
        >>> sde = sc.resolve("sde", "vp")
        >>> t = sample_times(sde, 4, law="lognormal", generator=torch.Generator().manual_seed(0))
        >>> bool(((t >= sde.eps) & (t <= sde.T)).all())
        True
    """
    lo, hi = (sde.eps, sde.T) if t_range is None else t_range
    if not (0 < lo < hi <= sde.T + 1e-12):
        raise ConfigError(format_error("t_range", f"0 < t_min < t_max <= T={sde.T}", repr(t_range),
                                       "match the sampler's range, e.g. (sde.eps, 0.1) for a truncated start"))
    spec = check_time_law(law)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if spec["type"] == "uniform":
        return (lo + (hi - lo) * u).to(dtype=dtype, device=device)
    # ln s ~ N(p_mean, p_std^2) truncated to [ln s(t_min), ln s(t_max)], s = sigma / alpha = exp(-log_snr)
    ends = -sde.log_snr(torch.tensor([lo, hi], dtype=torch.float64))
    normal = torch.distributions.Normal(torch.tensor(spec["p_mean"], dtype=torch.float64),
                                        torch.tensor(spec["p_std"], dtype=torch.float64))
    c_lo, c_hi = normal.cdf(ends[0]), normal.cdf(ends[1])
    q = (c_lo + u * (c_hi - c_lo)).clamp(1e-300, 1 - 1e-16)
    log_s = normal.icdf(q).clamp(float(ends[0]), float(ends[1]))
    t = sde.t_from_log_snr(-log_s).clamp(lo, hi)
    return t.to(dtype=dtype, device=device)


def dsm_loss(score_op: Callable[..., Tensor], sde: AbstractSDE, x0: Tensor, cond: Conditioning | None = None, *,
             t_range: tuple[float, float] | None = None, weighting: str | Callable[..., Tensor] = "sigma2",
             generator: torch.Generator | None = None, t: Tensor | None = None, z: Tensor | None = None,
             reduce: bool = True, time_law: Any = "uniform") -> Tensor:
    """Denoising score matching loss ``E_t E_z lambda(t) ||s(alpha x0 + sigma z, t) + z / sigma||^2``.

    Args:
        score_op: ``score_op(x, t, cond)``.
        sde: Forward SDE.
        x0: ``(batch, *event)`` clean samples.
        cond: Condition with batch ``batch``.
        t_range: ``(t_min, t_max)`` of the time law; should match the sampler's range.
        weighting: ``"sigma2"`` (default), ``"likelihood"`` (``g^2``), ``"none"`` or a callable
            ``(alpha, sigma, g) -> lambda`` on ``(batch,)`` tensors.
        generator: Seeds ``t`` and ``z``.
        t: Explicit times ``(batch,)`` instead of sampling.
        z: Explicit noise like ``x0``.
        reduce: Mean over the batch (else per-sample losses ``(batch,)``).
        time_law: Law of the training times (:func:`sample_times`).

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
        t = sample_times(sde, b, t_range, law=time_law, generator=generator, dtype=x0.dtype, device=x0.device)
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha, sigma = sde.marginal_coefficients(t)
    s = expand_as_batch(sigma, x0)
    xt = expand_as_batch(alpha, x0) * x0 + s * z
    score = score_op(xt, t, cond)
    per = ((score + z / s) ** 2).reshape(b, -1).mean(dim=1)
    per = per * wfn(alpha, sigma, sde.diffusion(t)).to(per.dtype)
    return per.mean() if reduce else per


