"""Gaussian noise laws of a closure residual, and the AR(1) fit of its memory in time.

* ``white``: ``U = sigma_c z`` with ``z ~ N(0, I)`` per pixel, ``sigma_c`` per channel.
* ``coloured``: a stationary, isotropic Gaussian field ``U = F^{-1}[A(|k|) F z]`` whose per-mode
  power follows a spectrum fitted on residual samples (:meth:`ColouredNoise.fit`): for the field's
  Fourier coefficients ``c_k = rfft2(U)_k / n^2``, ``E|c_k|^2 = P(round(|k|))``, the shell average of
  the samples. Defined in physical coefficients, so it applies at any even grid (shells beyond the
  fitted ones carry no power).
* :func:`fit_ar1`: lag-1 autocorrelation ``rho`` of a time series of residuals and its memory
  time ``-dt / log(rho)``, for rollout policies that correlate draws in time.

Both laws are latent-based and differentiable: the latent ``z`` of shape ``(C, *grid)`` is the
only randomness, so ``U`` is a linear function of it (``reparameterised = True``). Neither depends
on the condition beyond its batch size and grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._types import Conditioning
from ..config import Configurable
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error
from .base import AbstractClosureLaw, _grid

__all__ = ["WhiteNoise", "ColouredNoise", "AR1Fit", "fit_ar1", "radial_spectrum"]


def _check_samples(samples: Tensor, channels: int, name: str = "residual_samples") -> Tensor:
    if not isinstance(samples, Tensor) or samples.dim() < 3 or samples.shape[1] != channels:
        raise ShapeError(format_error(name, f"(N, {channels}, *grid) residual samples",
                                      f"shape {tuple(getattr(samples, 'shape', ()))}"))
    if samples.shape[0] < 2:
        raise ShapeError(format_error(name, "at least 2 samples", f"{samples.shape[0]}"))
    if not bool(torch.isfinite(samples).all()):
        raise NonFiniteError(format_error(name, "finite values", "NaN or inf"))
    return samples.detach().to(torch.float64)


def _check_latent(latent: Tensor | None, cond: Conditioning, shape: tuple[int, ...]) -> Tensor:
    b = cond.batch_size or 1
    if latent is None or tuple(latent.shape) != (b, *shape):
        raise ShapeError(format_error("latent", f"shape {(b, *shape)}",
                                      "None" if latent is None else f"shape {tuple(latent.shape)}"))
    return latent


class WhiteNoise(Configurable, AbstractClosureLaw):
    """White Gaussian noise ``U = sigma_c z``, iid per pixel, standard deviation ``sigma_c`` per channel.

    Args:
        sigma: One standard deviation, or one per channel (``>= 0``).
        channels: Channels ``C`` (the length of ``sigma`` when a list).
    """

    component_kind: ClassVar[str] = "closure"
    reparameterised: ClassVar[bool] = True

    def __init__(self, sigma: float | list[float] = 1.0, channels: int = 1) -> None:
        super().__init__()
        values = [float(s) for s in sigma] if isinstance(sigma, (list, tuple)) else [float(sigma)] * channels
        if len(values) != channels or not all(math.isfinite(s) and s >= 0 for s in values):
            raise ConfigError(format_error("sigma", f"{channels} finite standard deviation(s) >= 0", repr(sigma)))
        self.channels = channels
        self.register_buffer("sigma", torch.tensor(values, dtype=torch.float64))

    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, *grid)``."""
        return (self.channels, *grid)

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """``sigma_c * latent``, ``(B, C, *grid)``."""
        grid = _grid(cond, grid)
        z = _check_latent(latent, cond, self.latent_shape(cond, grid))
        return self.sigma.to(device=z.device, dtype=z.dtype).view(-1, *([1] * len(grid))) * z

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """Zeros ``(B, C, *grid)``."""
        grid = _grid(cond, grid)
        return torch.zeros((cond.batch_size or 1, self.channels, *grid))

    def log_prob(self, u: Tensor, cond: Conditioning) -> Tensor:
        """Gaussian log-density of ``u`` ``(..., B, C, *grid)`` summed over channels and grid, ``(..., B)``."""
        spatial = u.dim() - 2 if cond.spatial_shape is None else len(cond.spatial_shape)
        if u.dim() < spatial + 2 or u.shape[-1 - spatial] != self.channels:
            raise ShapeError(format_error("u", f"(..., B, {self.channels}, *grid)", f"shape {tuple(u.shape)}"))
        s = self.sigma.to(torch.float64).view(-1, *([1] * spatial))
        x = u.to(torch.float64)
        lp = -0.5 * (x / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
        return lp.flatten(-1 - spatial).sum(-1)

    def fit(self, residual_samples: Tensor) -> WhiteNoise:
        """Set ``sigma_c`` to the root mean square of ``residual_samples`` ``(N, C, *grid)`` per channel.

        The root mean square (not the centred standard deviation) since the law has mean zero.

        Returns:
            ``self``.
        """
        x = _check_samples(residual_samples, self.channels)
        rms = x.transpose(0, 1).flatten(1).pow(2).mean(1).sqrt()
        self.sigma.copy_(rms)
        self.config["sigma"] = [float(s) for s in rms]
        return self


def radial_spectrum(fields: Tensor, shells: int | None = None) -> Tensor:
    """Shell-averaged power ``P_c(s) = mean_{round|k| = s} |rfft2(f)_k / n^2|^2`` over samples, ``(C, S)``.

    Args:
        fields: ``(N, C, n, n)`` real fields, ``n`` even.
        shells: Number of shells ``S`` (default ``n / 2``; shells ``0 .. S - 1``).
    """
    n = fields.shape[-1]
    if fields.dim() != 4 or fields.shape[-2] != n or n % 2:
        raise ShapeError(format_error("fields", "(N, C, n, n) with even n", f"shape {tuple(fields.shape)}"))
    shells = n // 2 if shells is None else shells
    idx, weight = _shells(n, fields.device)
    power = (torch.fft.rfft2(fields.to(torch.float64)).abs() ** 2 / n**4) * weight  # half-plane weights
    flat = power.mean(0).flatten(1)
    total = torch.zeros(fields.shape[1], shells, dtype=torch.float64, device=fields.device)
    count = torch.zeros(shells, dtype=torch.float64, device=fields.device)
    keep = idx.flatten() < shells
    total.index_add_(1, idx.flatten()[keep], flat[:, keep])
    count.index_add_(0, idx.flatten()[keep], weight.flatten()[keep])
    return total / count.clamp_min(1.0)


def _shells(n: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Shell index ``round(|k|)`` of each ``rfft2`` entry and its multiplicity in the full plane."""
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64, device=device)[:, None]
    ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64, device=device)[None, :]
    idx = torch.sqrt(kx**2 + ky**2).round().long()
    weight = torch.full(idx.shape, 2.0, dtype=torch.float64, device=device)
    weight[:, 0] = 1.0
    weight[:, -1] = 1.0
    return idx, weight


class ColouredNoise(Configurable, AbstractClosureLaw):
    """Stationary isotropic Gaussian field with a fitted shell spectrum (module docstring).

    ``U = irfft2(n sqrt(P(round|k|)) rfft2(z))`` with ``z ~ N(0, I)`` per pixel and channel, so
    ``E|rfft2(U)_k / n^2|^2 = P(round|k|)``: the shell spectrum of the samples :meth:`fit` saw.

    Args:
        spectrum: Shell powers ``P_c(s)``, one list per channel (``None``: call :meth:`fit` first).
        channels: Channels ``C``.
    """

    component_kind: ClassVar[str] = "closure"
    reparameterised: ClassVar[bool] = True

    def __init__(self, spectrum: list[list[float]] | None = None, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("spectrum", torch.zeros(channels, 0, dtype=torch.float64))
        if spectrum is not None:
            p = torch.as_tensor(spectrum, dtype=torch.float64)
            if p.dim() != 2 or p.shape[0] != channels or not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
                raise ConfigError(format_error("spectrum", f"{channels} list(s) of finite shell powers >= 0",
                                               f"shape {tuple(p.shape)}"))
            self.spectrum = p

    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, *grid)``."""
        return (self.channels, *grid)

    def amplitude(self, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
        """``n sqrt(P(round|k|))`` on the ``rfft2`` grid, ``(C, n, n // 2 + 1)`` (zero beyond the fitted shells)."""
        if self.spectrum.shape[1] == 0:
            raise ConfigError(format_error("spectrum", "a fitted spectrum", "none",
                                           "call ColouredNoise.fit(residual_samples) or pass spectrum="))
        idx, _ = _shells(n, device)
        p = self.spectrum.to(device)
        padded = torch.cat((p, torch.zeros(p.shape[0], max(0, int(idx.max()) + 1 - p.shape[1]), dtype=p.dtype,
                                           device=device)), 1)
        return (n * padded[:, idx].sqrt()).to(dtype)

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Coloured latent ``(B, C, n, n)``."""
        grid = _grid(cond, grid)
        if len(grid) != 2 or grid[0] != grid[1] or grid[0] % 2:
            raise ShapeError(format_error("grid", "a square even 2-D grid (n, n)", repr(grid)))
        z = _check_latent(latent, cond, self.latent_shape(cond, grid))
        amp = self.amplitude(grid[0], z.dtype, z.device)
        return torch.fft.irfft2(amp * torch.fft.rfft2(z), s=grid)

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """Zeros ``(B, C, *grid)``."""
        grid = _grid(cond, grid)
        return torch.zeros((cond.batch_size or 1, self.channels, *grid))

    @classmethod
    def example(cls) -> ColouredNoise:
        """A small fitted instance (spectrum of smoothed white noise on 16^2), for contract tests."""
        z = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return cls().fit(z.cumsum(-1))

    def fit(self, residual_samples: Tensor) -> ColouredNoise:
        """Fit the shell spectrum to ``residual_samples`` ``(N, C, n, n)`` (:func:`radial_spectrum`).

        Returns:
            ``self``.
        """
        x = _check_samples(residual_samples, self.channels)
        p = radial_spectrum(x, shells=int(math.ceil(math.sqrt(2) * x.shape[-1] / 2)) + 1)
        self.spectrum = p.to(self.spectrum.device)
        self.config["spectrum"] = p.tolist()
        return self


@dataclass(frozen=True)
class AR1Fit:
    """Lag-1 fit of a residual time series.

    Attributes:
        rho: Pooled lag-1 autocorrelation, in ``[0, 1)`` (negative values clipped to 0).
        tau: Memory time ``-dt / log(rho)`` (``0`` when ``rho = 0``), in the units of ``dt``.
        sigma: Stationary standard deviation of the series (pooled).
    """

    rho: float
    tau: float
    sigma: float


def fit_ar1(series: Tensor, dt: float = 1.0) -> AR1Fit:
    """Fit ``r_{t+1} = rho r_t + sqrt(1 - rho^2) sigma eps`` to residuals sampled every ``dt``.

    Args:
        series: ``(T, ...)`` residuals at ``T >= 3`` equally spaced times (any trailing shape:
            batch, channels, grid are pooled); the mean over time and members is removed.
        dt: Time between records.

    Returns:
        :class:`AR1Fit`.
    """
    if not isinstance(series, Tensor) or series.dim() < 1 or series.shape[0] < 3:
        raise ShapeError(format_error("series", "(T, ...) with T >= 3 times", f"shape {tuple(getattr(series, 'shape', ()))}"))
    if not (isinstance(dt, (int, float)) and dt > 0):
        raise ConfigError(format_error("dt", "a positive time step", repr(dt)))
    if not bool(torch.isfinite(series).all()):
        raise NonFiniteError(format_error("series", "finite values", "NaN or inf"))
    x = series.detach().to(torch.float64)
    x = x - x.mean()
    var = float((x * x).mean())
    if var == 0.0:
        return AR1Fit(0.0, 0.0, 0.0)
    rho = float((x[1:] * x[:-1]).mean() / ((x[1:] ** 2).mean() * (x[:-1] ** 2).mean()).sqrt())
    rho = min(max(rho, 0.0), 1.0 - 1e-12)
    tau = 0.0 if rho == 0.0 else -float(dt) / math.log(rho)
    return AR1Fit(rho, tau, math.sqrt(var))
