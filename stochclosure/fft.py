"""Periodic spectral helpers shared by encoders, systems and metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ShapeError, format_error

__all__ = ["spectral_resample"]


def spectral_resample(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Resample a periodic field to ``grid`` by Fourier truncation or zero padding.

    Exact for fields band-limited strictly below the smaller grid's Nyquist wavenumber; the
    (ambiguous) Nyquist mode of an even grid is dropped so the result stays real.

    Args:
        x: ``(batch, channels, *spatial)`` with 1 or 2 spatial dims.
        grid: Target spatial shape with as many dims.

    Returns:
        ``(batch, channels, *grid)``.
    """
    spatial = tuple(x.shape[2:])
    grid = tuple(int(g) for g in grid)
    if len(grid) != len(spatial):
        raise ShapeError(format_error("grid", f"{len(spatial)} spatial dims like the field", repr(grid)))
    if grid == spatial:
        return x
    dims = tuple(range(2, x.dim()))
    xf = torch.fft.fftn(x, dim=dims, norm="forward")
    out = torch.zeros((*x.shape[:2], *grid), dtype=xf.dtype, device=x.device)
    idx_in, idx_out = [], []
    for n_in, n_out in zip(spatial, grid):
        m = min(n_in, n_out)
        kmax = (m - 1) // 2  # modes strictly below Nyquist of the smaller grid
        k = torch.cat([torch.arange(0, kmax + 1), torch.arange(-kmax, 0)])
        idx_in.append(k % n_in)
        idx_out.append(k % n_out)
    if len(grid) == 1:
        out[..., idx_out[0]] = xf[..., idx_in[0]]
    else:
        out[..., idx_out[0][:, None], idx_out[1][None, :]] = xf[..., idx_in[0][:, None], idx_in[1][None, :]]
    return torch.fft.ifftn(out, dim=dims, norm="forward").real.to(x.dtype)
