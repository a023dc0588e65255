"""Pseudo-spectral building blocks on the periodic unit square (``rfft2``, any even ``n``).

Conventions:

* A field is ``(..., n, n)``; axis ``-2`` is ``x``, axis ``-1`` is ``y``; grid point ``(i, j)`` sits
  at ``(i / n, j / n)``.
* Spectral coefficients are ``torch.fft.rfft2`` of the field (``norm="backward"``), shape
  ``(..., n, n // 2 + 1)``. Physical wavenumbers are ``lambda = 2 pi k`` with integer ``k``.
* The 2/3 rule keeps ``|k_x| <= (n - 1) // 3`` and ``|k_y| <= (n - 1) // 3`` (a square mask), for
  which the kept modes of a product of two masked fields are computed without aliasing. This is
  the largest alias-free cut ``K`` for every ``n`` (Orszag's rule, ``|k| < n / 3``): a product of
  kept modes ``k, p`` has ``|k + p| <= 2K``, which the ``n``-point grid folds onto ``k + p - n``;
  that lands on a kept mode iff ``2K - n >= -K``, i.e. ``3K >= n``. So ``K = n // 3`` aliases
  whenever ``3`` divides ``n`` (``2n/3`` folds onto the kept ``-n/3``), and ``(n - 1) // 3``,
  one mode less there, is the right choice (tested against a zero-padded product).
* The nonlinear term is written as it appears on the right-hand side,
  ``N(omega) = -(u . grad omega)`` with ``u = (d psi / dy, -d psi / dx)``, ``-Lap psi = omega``
  and the ``k = 0`` mode of ``psi`` set to zero.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError, format_error

__all__ = ["SpectralGrid", "spectral_grid", "resize_hat", "exact_nonlinear_hat", "hermitian_half", "noise_block_size",
           "place_block", "add_block_"]


@dataclass(frozen=True)
class SpectralGrid:
    """Cached wavenumber operators of an ``n x n`` periodic grid on one device and dtype.

    Attributes:
        n: Grid points per side.
        lx: ``2 pi k_x``, shape ``(n, 1)``.
        ly: ``2 pi k_y`` (``rfft`` half), shape ``(1, n // 2 + 1)``.
        lam2: ``|lambda|^2``, shape ``(n, n // 2 + 1)``.
        inv_lam2: ``1 / |lambda|^2`` with the ``k = 0`` entry set to 0.
        dealias: 2/3-rule mask (0 or 1), shape ``(n, n // 2 + 1)``.
        kx, ky: Integer wavenumbers, shapes ``(n, 1)`` and ``(1, n // 2 + 1)``.
        ilx, ily: ``i lx`` and ``i ly`` (complex), the spectral derivatives.
        uvgrad: ``(4, n, n // 2 + 1)`` dealiased multipliers taking ``w`` to ``(u, v, d_x w, d_y w)``.
        neg_dealias: ``-dealias``.
    """

    n: int
    lx: Tensor
    ly: Tensor
    lam2: Tensor
    inv_lam2: Tensor
    dealias: Tensor
    kx: Tensor
    ky: Tensor
    ilx: Tensor
    ily: Tensor
    uvgrad: Tensor
    neg_dealias: Tensor

    def rfft(self, x: Tensor) -> Tensor:
        """``rfft2`` over the last two axes."""
        return torch.fft.rfft2(x)

    def irfft(self, x_hat: Tensor) -> Tensor:
        """Inverse of :meth:`rfft` (real ``(..., n, n)``)."""
        return torch.fft.irfft2(x_hat, s=(self.n, self.n))

    def nonlinear_hat(self, w_hat: Tensor) -> Tensor:
        """Dealiased ``N(omega) = -(u . grad omega)`` in spectral space.

        Args:
            w_hat: ``rfft2`` of the vorticity, ``(..., n, n // 2 + 1)``.

        Returns:
            ``rfft2`` of ``N``, same shape, zero outside the 2/3 mask.
        """
        # one broadcast product gives the dealiased (u, v, d_x w, d_y w) in spectral space
        u, v, wx, wy = torch.fft.irfft2(w_hat.unsqueeze(-3) * self.uvgrad, s=(self.n, self.n)).unbind(-3)
        return torch.fft.rfft2(u * wx + v * wy) * self.neg_dealias

    def velocity(self, w_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Velocity ``(u, v)`` of a vorticity (no dealiasing), each ``(..., n, n)``."""
        psi = w_hat * self.inv_lam2
        uv = torch.fft.irfft2(torch.stack((1j * self.ly * psi, -1j * self.lx * psi), dim=-3), s=(self.n, self.n))
        return uv[..., 0, :, :], uv[..., 1, :, :]


@functools.lru_cache(maxsize=64)
def spectral_grid(n: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> SpectralGrid:
    """The (cached) :class:`SpectralGrid` of an ``n x n`` grid.

    Args:
        n: Even number of grid points per side (``>= 4``).
        dtype: Real dtype of the operators (float32 or float64).
        device: Device of the operators.
    """
    if not (isinstance(n, int) and n >= 4 and n % 2 == 0):
        raise ShapeError(format_error("n", "an even integer >= 4 (rfft2 grid)", repr(n),
                                      "use an even grid size such as 32, 64 or 256"))
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(format_error("dtype", "torch.float32 or torch.float64", str(dtype)))
    kx = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device).round()[:, None]
    ky = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=device).round()[None, :]
    lx, ly = 2 * math.pi * kx, 2 * math.pi * ky
    lam2 = lx**2 + ly**2
    inv = torch.where(lam2 > 0, 1.0 / torch.where(lam2 > 0, lam2, torch.ones_like(lam2)), torch.zeros_like(lam2))
    kmax = (n - 1) // 3
    mask = ((kx.abs() <= kmax) & (ky.abs() <= kmax)).to(torch.float64)
    c = functools.partial(torch.Tensor.to, dtype=dtype)
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    ilx, ily = (1j * lx).expand(n, n // 2 + 1), (1j * ly).expand(n, n // 2 + 1)
    uvgrad = torch.stack((ily * inv, -ilx * inv, ilx, ily)) * mask
    return SpectralGrid(n=n, lx=c(lx), ly=c(ly), lam2=c(lam2), inv_lam2=c(inv), dealias=c(mask), kx=kx, ky=ky,
                        ilx=(1j * lx).to(cdt), ily=(1j * ly).to(cdt), uvgrad=uvgrad.to(cdt), neg_dealias=c(-mask))


def resize_hat(x_hat: Tensor, n_from: int, n_to: int) -> Tensor:
    """Move ``rfft2`` coefficients between grids, keeping modes ``|k_x|, |k_y| <= min(n_from, n_to) / 2 - 1``.

    The Nyquist modes are dropped; values are rescaled so that the field (not the coefficients)
    is preserved, i.e. ``irfft2(resize_hat(rfft2(f), n, m), s=(m, m))`` interpolates ``f``.

    Args:
        x_hat: ``(..., n_from, n_from // 2 + 1)``.
        n_from: Source grid size (even).
        n_to: Target grid size (even).

    Returns:
        ``(..., n_to, n_to // 2 + 1)``.
    """
    keep = min(n_from, n_to) // 2 - 1
    out = torch.zeros((*x_hat.shape[:-2], n_to, n_to // 2 + 1), dtype=x_hat.dtype, device=x_hat.device)
    rows = torch.arange(-keep, keep + 1, device=x_hat.device)
    out[..., rows % n_to, : keep + 1] = x_hat[..., rows % n_from, : keep + 1] * ((n_to / n_from) ** 2)
    return out


def exact_nonlinear_hat(w_hat: Tensor, n: int) -> Tensor:
    """``N(omega) = -(u . grad omega)`` of a field on ``n x n`` with *every* resolved triad, no truncation.

    The field's modes ``|k| <= n / 2 - 1`` are zero-padded to ``m = 3 n / 2`` points, where the
    2/3 rule keeps exactly those modes (``(m - 1) // 3 = n / 2 - 1``), so the product is computed
    without aliasing and truncated back: the result is the projection ``P_n N(P_n omega)`` of the
    continuous nonlinear term onto the resolved modes, exact to round-off (the "3/2 rule"). The
    2/3-rule term :meth:`SpectralGrid.nonlinear_hat` instead drops the triads involving modes above
    ``n / 3``.

    Args:
        w_hat: ``rfft2`` of the vorticity on ``n x n``, ``(..., n, n // 2 + 1)``.
        n: Grid size (even, ``>= 4``).

    Returns:
        ``rfft2`` of ``P_n N``, ``(..., n, n // 2 + 1)`` (Nyquist modes zero).
    """
    m = 3 * n // 2 + (3 * n // 2) % 2
    g = spectral_grid(m, w_hat.real.dtype, w_hat.device)
    return resize_hat(g.nonlinear_hat(resize_hat(w_hat, n, m)), m, n)


def hermitian_half(xi: Tensor) -> Tensor:
    """Half-plane Fourier coefficients of ``Re(sum_k xi_k exp(2 pi i k.x))``.

    ``xi`` is a centred block of complex coefficients indexed by ``k_x, k_y`` in ``[-K, K]``
    (shape ``(..., 2K+1, 2K+1)``); the real part of the corresponding field has coefficients
    ``(xi_k + conj(xi_{-k})) / 2``, returned for ``k_y`` in ``[0, K]``: ``(..., 2K+1, K+1)``.
    """
    half = xi.shape[-1] // 2
    folded = 0.5 * (xi + torch.flip(xi, dims=(-2, -1)).conj())
    return folded[..., half:]


def noise_block_size(alpha: float, rel_cutoff: float = 1e-17) -> int:
    """Largest ``K`` with ``exp(-alpha (2 pi K)^2 / 2) >= rel_cutoff``.

    Modes beyond ``K`` in either direction carry an amplitude below ``rel_cutoff`` times that of
    mode 0 (below double-precision round-off for the default), so they are not drawn.
    """
    if alpha <= 0:
        raise ConfigError(format_error("noise_alpha", "a positive float", repr(alpha)))
    return int(math.floor(math.sqrt(2 * math.log(1 / rel_cutoff) / alpha) / (2 * math.pi)))


def place_block(block: Tensor, n: int) -> Tensor:
    """Put half-plane coefficients ``(..., 2K+1, K+1)`` (k_x in [-K, K]) into an ``rfft2`` array.

    Modes that an ``n x n`` grid cannot hold strictly below its Nyquist wavenumber are dropped.

    Returns:
        ``(..., n, n // 2 + 1)`` complex, with the block's values (no rescaling).
    """
    out = torch.zeros((*block.shape[:-2], n, n // 2 + 1), dtype=block.dtype, device=block.device)
    return add_block_(out, block)


def add_block_(target: Tensor, block: Tensor, scale: float = 1.0) -> Tensor:
    """In place ``target += scale * block`` for a centred half-plane block (see :func:`place_block`).

    Only the block's modes are touched, so adding low-mode noise costs ``O(K^2)``, not ``O(n^2)``.
    """
    n = target.shape[-2]
    big_k = block.shape[-1] - 1
    keep = min(big_k, n // 2 - 1)
    sub = block[..., big_k - keep: big_k + keep + 1, : keep + 1]
    if scale != 1.0:
        sub = sub * scale
    target[..., : keep + 1, : keep + 1] += sub[..., keep:, :].to(target.dtype)
    if keep:
        target[..., n - keep:, : keep + 1] += sub[..., :keep, :].to(target.dtype)
    return target
