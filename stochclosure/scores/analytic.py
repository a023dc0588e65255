"""Exact scores of Gaussian laws under any built-in SDE: ground truth for tests and benchmarks.

If ``x_0 ~ N(m, C)`` and the SDE's kernel is ``N(alpha_t x_0, sigma_t^2 I)``, then
``x_t ~ N(alpha_t m, alpha_t^2 C + sigma_t^2 I)`` and the score is
``-(alpha_t^2 C + sigma_t^2 I)^{-1} (x - alpha_t m)``. Three covariance structures are exact and
cheap: isotropic (``std^2 I``), dense (small vectors) and *spectral*: a stationary Gaussian
random field on a periodic grid, diagonal in the Fourier basis, defined by a continuous
spectrum so the same law exists at every resolution.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import Conditioning, check_tensor
from ..errors import ConfigError, ShapeError, format_error
from ..registry import resolve
from ..sdes.base import AbstractSDE, expand_as_batch
from .base import AbstractScoreOperator

__all__ = [
    "Covariance",
    "IsotropicCovariance",
    "DenseCovariance",
    "SpectralCovariance",
    "grf_spectrum",
    "GaussianScore",
    "LinearGaussianScore",
    "wavenumbers",
]


def wavenumbers(spatial: tuple[int, ...], rfft: bool = True, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> Tensor:
    """Integer wavenumber magnitudes ``|k|`` on a periodic grid of unit period.

    Args:
        spatial: ``(n,)`` or ``(ny, nx)``.
        rfft: Return the half spectrum of ``torch.fft.rfftn`` (last axis ``n // 2 + 1``).

    Returns:
        Tensor of ``|k|`` with the FFT layout of ``spatial``.
    """
    axes = []
    for i, n in enumerate(spatial):
        last = i == len(spatial) - 1
        k = torch.fft.rfftfreq(n, 1.0 / n) if (rfft and last) else torch.fft.fftfreq(n, 1.0 / n)
        axes.append(k.to(dtype=dtype, device=device))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


def grf_spectrum(k: Tensor, alpha: float = 2.5, tau: float = 7.0, scale: float = 1.0) -> Tensor:
    """Matern-type spectrum ``scale * (4 pi^2 |k|^2 + tau^2)^(-alpha)`` (REFERENCE §1), mean removed."""
    s = scale * (4.0 * math.pi**2 * k**2 + tau**2) ** (-alpha)
    return torch.where(k == 0, torch.zeros_like(s), s)


class Covariance(abc.ABC):
    """A covariance ``C`` on an event shape with the few operations exact scores need."""

    @abc.abstractmethod
    def solve_shifted(self, v: Tensor, a2: Tensor, s2: Tensor) -> Tensor:
        """``(a2 C + s2 I)^{-1} v``; v ``(batch, *event)``, a2 and s2 broadcastable ``(batch, 1, ...)``."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` draws of ``N(0, C)``, shape ``(n, *event)``."""

    @abc.abstractmethod
    def variance(self) -> Tensor:
        """Pointwise marginal variances, shape ``event``."""

    @abc.abstractmethod
    def apply(self, v: Tensor) -> Tensor:
        """``C v`` for v ``(batch, *event)``."""


class IsotropicCovariance(Covariance):
    """``C = std^2 I`` on ``event_shape``."""

    def __init__(self, event_shape: tuple[int, ...], std: float) -> None:
        self.event_shape, self.std = tuple(event_shape), float(std)

    def solve_shifted(self, v: Tensor, a2: Tensor, s2: Tensor) -> Tensor:
        return v / (a2 * self.std**2 + s2)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.std * torch.randn((n, *self.event_shape), generator=generator, dtype=dtype)

    def variance(self) -> Tensor:
        return torch.full(self.event_shape, self.std**2, dtype=torch.float64)

    def apply(self, v: Tensor) -> Tensor:
        return self.std**2 * v


class DenseCovariance(Covariance):
    """A full symmetric positive-definite matrix on vector events ``(dim,)``."""

    def __init__(self, matrix: Tensor) -> None:
        check_tensor("covariance", matrix, rank=2)
        if matrix.shape[0] != matrix.shape[1]:
            raise ShapeError(format_error("covariance", "a square matrix", f"shape {tuple(matrix.shape)}"))
        m = matrix.double()
        if not torch.allclose(m, m.T, atol=1e-10 * float(m.abs().max())):
            raise ConfigError(format_error("covariance", "a symmetric matrix", "an asymmetric one", "use (C + C.T) / 2"))
        evals, evecs = torch.linalg.eigh(m)
        if float(evals.min()) <= 0:
            raise ConfigError(format_error("covariance", "a positive-definite matrix",
                                           f"smallest eigenvalue {float(evals.min()):.3g}"))
        self.matrix, self.evals, self.evecs = m, evals, evecs
        self.event_shape = (m.shape[0],)

    def solve_shifted(self, v: Tensor, a2: Tensor, s2: Tensor) -> Tensor:
        q = self.evecs.to(v.dtype)
        coef = (v @ q) / (a2 * self.evals.to(v.dtype) + s2)
        return coef @ q.T

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        z = torch.randn((n, self.event_shape[0]), generator=generator, dtype=torch.float64)
        return ((z * self.evals.sqrt()) @ self.evecs.T).to(dtype)

    def variance(self) -> Tensor:
        return torch.diagonal(self.matrix).clone()

    def apply(self, v: Tensor) -> Tensor:
        return v @ self.matrix.to(v.dtype).T


class SpectralCovariance(Covariance):
    """A stationary Gaussian random field on a periodic grid, diagonal in Fourier space.

    The field is ``u(x) = sum_k u_k exp(2 pi i k.x)`` with ``E|u_k|^2 = S(|k|)``; on a grid with
    ``N`` points the orthonormal DFT coefficients have variance ``N S(|k|)``, so the same ``S``
    gives the same physical law at every resolution (up to the modes the grid cannot hold).

    Args:
        event_shape: ``(channels, *spatial)`` with 1 or 2 spatial dims.
        spectrum: ``S`` evaluated at integer ``|k|`` (a callable of a float64 tensor).
    """

    def __init__(self, event_shape: tuple[int, ...], spectrum: Any) -> None:
        if len(event_shape) not in (2, 3):
            raise ShapeError(format_error("event_shape", "(channels, n) or (channels, ny, nx)", repr(event_shape)))
        self.event_shape = tuple(event_shape)
        self.spatial = self.event_shape[1:]
        n_tot = math.prod(self.spatial)
        self.eig_half = (n_tot * spectrum(wavenumbers(self.spatial, rfft=True))).clamp_min(0.0)
        self._eig_full = (n_tot * spectrum(wavenumbers(self.spatial, rfft=False))).clamp_min(0.0)
        self._dims = tuple(range(-len(self.spatial), 0))

    def _fft(self, v: Tensor) -> Tensor:
        return torch.fft.rfftn(v, dim=self._dims, norm="ortho")

    def _ifft(self, v: Tensor) -> Tensor:
        return torch.fft.irfftn(v, s=self.spatial, dim=self._dims, norm="ortho")

    def solve_shifted(self, v: Tensor, a2: Tensor, s2: Tensor) -> Tensor:
        eig = self.eig_half.to(device=v.device, dtype=v.dtype)
        return self._ifft(self._fft(v) / (a2 * eig + s2))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        return self._ifft(self._fft(z) * self.eig_half.sqrt()).to(dtype)

    def variance(self) -> Tensor:
        return torch.full(self.event_shape, float(self._eig_full.mean()), dtype=torch.float64)

    def apply(self, v: Tensor) -> Tensor:
        return self._ifft(self._fft(v) * self.eig_half.to(device=v.device, dtype=v.dtype))

    def mode_variances(self) -> Tensor:
        """Eigenvalues on the rfft half spectrum, shape ``spatial[:-1] + (n // 2 + 1,)``."""
        return self.eig_half.clone()


def _resolve_sde(sde: Any) -> AbstractSDE:
    return resolve("sde", sde)


class _GaussianBase(AbstractScoreOperator):
    """Shared machinery: ``score = -(a^2 C + s^2 I)^{-1} (x - a m(cond))``."""

    sde: AbstractSDE
    _cov_cache: dict[tuple[Any, ...], Covariance]

    def _covariance(self, event_shape: tuple[int, ...]) -> Covariance:
        raise NotImplementedError

    def _mean(self, event_shape: tuple[int, ...], cond: Conditioning | None, like: Tensor) -> Tensor:
        raise NotImplementedError

    def covariance(self, event_shape: tuple[int, ...]) -> Covariance:
        """The data covariance on ``event_shape`` (cached per shape)."""
        key = tuple(event_shape)
        if key not in self._cov_cache:
            self._cov_cache[key] = self._covariance(key)
        return self._cov_cache[key]

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        alpha, sigma = self.sde.marginal_coefficients(t)
        a = expand_as_batch(alpha, x)
        s = expand_as_batch(sigma, x)
        cov = self.covariance(tuple(x.shape[1:]))
        mean = self._mean(tuple(x.shape[1:]), cond, x)
        return -cov.solve_shifted(x - a * mean, a * a, s * s)

    def mean(self, event_shape: tuple[int, ...], cond: Conditioning | None = None, batch: int = 1) -> Tensor:
        """Exact mean of the clean law, ``(batch, *event)`` (``batch`` from ``cond`` if given)."""
        like = torch.zeros((1, *event_shape), dtype=torch.float64)
        m = self._mean(tuple(event_shape), cond, like)
        b = cond.batch_size if cond is not None and cond.batch_size else batch
        return m.expand(b, *event_shape).clone() if m.shape[0] != b else m

    def sample_exact(self, event_shape: tuple[int, ...], n: int, cond: Conditioning | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the clean law: ``(n, *event)``, or ``(batch * n, *event)`` member-major with ``cond``."""
        if cond is not None and cond.batch_size:
            mean = self.mean(event_shape, cond).repeat_interleave(n, dim=0)
        else:
            mean = self.mean(event_shape, None, batch=n)
        noise = self.covariance(tuple(event_shape)).sample(mean.shape[0], generator=generator, dtype=torch.float64)
        return mean + noise


class GaussianScore(_GaussianBase):
    """Exact score of an unconditional Gaussian data law ``N(mean, C)`` under ``sde``.

    Exactly one covariance form is used: ``covariance`` (dense matrix, vector events), ``grf``
    (a stationary periodic field of spectrum ``scale (4 pi^2 |k|^2 + tau^2)^(-alpha)``, any
    resolution) or ``std`` (isotropic, the default).

    Args:
        sde: The forward SDE (name, spec dict or instance).
        mean: Scalar mean, or a tensor broadcastable to the event.
        std: Isotropic std (used when neither ``covariance`` nor ``grf`` is given).
        covariance: ``(dim, dim)`` SPD matrix for vector events.
        grf: ``{"alpha": ..., "tau": ..., "scale": ...}`` spectrum parameters for fields.

    Example:
        >>> op = GaussianScore("vp", std=2.0)
        >>> x = torch.zeros(3, 1, 8, 8); t = torch.full((3,), 0.5)
        >>> op(x, t).abs().max().item()
        0.0
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (0, 1, 2)
    resolution_invariant: ClassVar[bool] = True
    conditional: ClassVar[bool] = False

    def __init__(self, sde: Any = "ve", mean: float | Tensor = 0.0, std: float = 1.0,
                 covariance: Tensor | None = None, grf: dict[str, float] | None = None) -> None:
        super().__init__()
        if covariance is not None and grf is not None:
            raise ConfigError(format_error("covariance", "either covariance or grf", "both"))
        self.sde = _resolve_sde(sde)
        self.mean_value = torch.as_tensor(mean, dtype=torch.float64)
        self.std = float(std)
        self.dense = DenseCovariance(torch.as_tensor(covariance)) if covariance is not None else None
        self.grf = dict(grf) if grf is not None else None
        self._cov_cache = {}

    def _covariance(self, event_shape: tuple[int, ...]) -> Covariance:
        if self.dense is not None:
            if event_shape != self.dense.event_shape:
                raise ShapeError(format_error("x", f"events of shape {self.dense.event_shape}", f"{event_shape}"))
            return self.dense
        if self.grf is not None:
            p = self.grf
            return SpectralCovariance(event_shape, lambda k: grf_spectrum(k, p.get("alpha", 2.5), p.get("tau", 7.0),
                                                                          p.get("scale", 1.0)))
        return IsotropicCovariance(event_shape, self.std)

    def _mean(self, event_shape: tuple[int, ...], cond: Conditioning | None, like: Tensor) -> Tensor:
        return self.mean_value.to(dtype=like.dtype, device=like.device).expand(1, *event_shape)

    @classmethod
    def example(cls) -> GaussianScore:
        return cls("vp", mean=0.5, grf={"alpha": 2.0, "tau": 3.0, "scale": 400.0})

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        x = torch.randn(batch, 1, 16, 16, generator=generator)
        t = self.sde.eps + (self.sde.T - self.sde.eps) * torch.rand(batch, generator=generator)
        return x, t, None


class LinearGaussianScore(_GaussianBase):
    """Exact score of a conditional linear-Gaussian law ``U = A y + b + eps``, ``eps ~ N(0, C)``.

    Two forms, chosen by the arguments:

    * **vectors**: ``y = cond.features`` ``(batch, dim_y)``, ``matrix`` ``A`` ``(dim, dim_y)``,
      noise covariance ``noise_covariance`` (dense) or isotropic ``noise_std``.
    * **fields**: ``y = cond.fields`` ``(batch, c, *spatial)``, ``A`` a periodic Gaussian
      smoothing ``gain * exp(-(2 pi |k| length)^2 / 2)`` applied per channel, noise a stationary
      random field of spectrum ``noise_grf`` (or isotropic ``noise_std``). Any resolution.

    Args:
        sde: The forward SDE.
        matrix: ``A`` for vector events.
        offset: ``b`` (scalar or tensor broadcastable to the event).
        smoothing_length: Field form: smoothing length in units of the period.
        gain: Field form: gain of the smoothing.
        noise_std: Isotropic noise std.
        noise_covariance: Dense noise covariance (vector form).
        noise_grf: Noise spectrum parameters (field form), as in :class:`GaussianScore`.
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (0, 1, 2)
    resolution_invariant: ClassVar[bool] = True
    conditional: ClassVar[bool] = True

    def __init__(self, sde: Any = "ve", matrix: Tensor | None = None, offset: float | Tensor = 0.0,
                 smoothing_length: float | None = None, gain: float = 1.0, noise_std: float = 1.0,
                 noise_covariance: Tensor | None = None, noise_grf: dict[str, float] | None = None) -> None:
        super().__init__()
        if (matrix is None) == (smoothing_length is None):
            raise ConfigError(format_error("matrix", "exactly one of matrix (vectors) or smoothing_length (fields)",
                                           "both" if matrix is not None else "neither"))
        self.sde = _resolve_sde(sde)
        self.matrix = None if matrix is None else torch.as_tensor(matrix, dtype=torch.float64)
        self.offset = torch.as_tensor(offset, dtype=torch.float64)
        self.smoothing_length = smoothing_length
        self.gain = float(gain)
        self.noise_std = float(noise_std)
        self.dense = DenseCovariance(torch.as_tensor(noise_covariance)) if noise_covariance is not None else None
        self.noise_grf = dict(noise_grf) if noise_grf is not None else None
        self._cov_cache = {}

    def _covariance(self, event_shape: tuple[int, ...]) -> Covariance:
        if self.dense is not None:
            return self.dense
        if self.noise_grf is not None:
            p = self.noise_grf
            return SpectralCovariance(event_shape, lambda k: grf_spectrum(k, p.get("alpha", 2.5), p.get("tau", 7.0),
                                                                          p.get("scale", 1.0)))
        return IsotropicCovariance(event_shape, self.noise_std)

    def transfer(self, spatial: tuple[int, ...]) -> Tensor:
        """Fourier multiplier of the smoothing on the rfft half spectrum of ``spatial``."""
        assert self.smoothing_length is not None
        k = wavenumbers(spatial, rfft=True)
        return self.gain * torch.exp(-0.5 * (2.0 * math.pi * k * self.smoothing_length) ** 2)

    def _mean(self, event_shape: tuple[int, ...], cond: Conditioning | None, like: Tensor) -> Tensor:
        off = self.offset.to(dtype=like.dtype, device=like.device)
        if self.matrix is not None:
            if cond is None or cond.features is None:
                raise ShapeError(format_error("cond.features", "y of shape (batch, dim_y)", "None"))
            y = cond.features.to(like.dtype)
            return y @ self.matrix.to(like.dtype).T + off
        if cond is None or cond.fields is None:
            raise ShapeError(format_error("cond.fields", "y of shape (batch, c, *spatial)", "None"))
        y = cond.fields.to(like.dtype)
        spatial = tuple(event_shape[1:])
        if tuple(y.shape[1:]) != tuple(event_shape):
            raise ShapeError(format_error("cond.fields", f"shape (batch, {', '.join(map(str, event_shape))})",
                                          f"shape {tuple(y.shape)}", "condition on fields on the same grid as x"))
        dims = tuple(range(-len(spatial), 0))
        h = self.transfer(spatial).to(dtype=like.dtype, device=like.device)
        return torch.fft.irfftn(torch.fft.rfftn(y, dim=dims) * h, s=spatial, dim=dims) + off

    @classmethod
    def example(cls) -> LinearGaussianScore:
        return cls("ve", smoothing_length=0.05, gain=0.8, noise_grf={"alpha": 2.0, "tau": 3.0, "scale": 400.0})

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        x = torch.randn(batch, 1, 16, 16, generator=generator)
        t = self.sde.eps + (self.sde.T - self.sde.eps) * torch.rand(batch, generator=generator)
        cond = Conditioning(fields=torch.randn(batch, 1, 16, 16, generator=generator))
        return x, t, cond
