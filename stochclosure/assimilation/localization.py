"""Covariance localisation on periodic domains: the Gaspari–Cohn taper over minimum-image distances."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError, format_error

__all__ = ["gaspari_cohn", "periodic_distance"]


def gaspari_cohn(r: Tensor, c: float) -> Tensor:
    """Gaspari & Cohn (1999, QJRMS 125, eq. 4.10) fifth-order compactly supported correlation.

    ``rho(0) = 1``, ``rho(c) = 5/24 ~ 0.208`` and ``rho = 0`` for ``r >= 2 c``.

    Args:
        r: Distances (any shape, ``>= 0``).
        c: Half-width ``c`` (the taper's support is ``2 c``).

    Returns:
        Taper values like ``r``.

    Example:
        >>> import torch
        >>> gaspari_cohn(torch.tensor([0.0, 0.1, 0.2]), 0.1).tolist()  # doctest: +ELLIPSIS
        [1.0, 0.208..., 0.0]
    """
    z = r / c
    z2, z3 = z * z, z * z * z
    z4, z5 = z3 * z, z3 * z2
    inner = -0.25 * z5 + 0.5 * z4 + 0.625 * z3 - 5.0 / 3.0 * z2 + 1.0
    outer = z5 / 12.0 - 0.5 * z4 + 0.625 * z3 + 5.0 / 3.0 * z2 - 5.0 * z + 4.0 - 2.0 / (3.0 * z.clamp_min(1e-300))
    out = torch.where(z <= 1.0, inner, torch.where(z < 2.0, outer, torch.zeros_like(z)))
    return out.clamp_min(0.0)


def periodic_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean minimum-image distance on the unit torus between ``a`` ``(A, d)`` and ``b`` ``(B, d)``: ``(A, B)``."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(format_error("locations", "two point sets (A, d) and (B, d) of one dimension d",
                                      f"shapes {tuple(a.shape)} and {tuple(b.shape)}"))
    diff = torch.remainder(a.double()[:, None, :] - b.double()[None, :, :] + 0.5, 1.0) - 0.5
    return diff.pow(2).sum(-1).sqrt()

