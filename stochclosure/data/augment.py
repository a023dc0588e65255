"""Symmetry augmentation for isotropic periodic systems: the dihedral group D4 of the square.

The periodic unit square with grid points at ``i / n`` is mapped onto itself by the eight
elements of D4 (rotations by multiples of 90 degrees about the origin, with or without a
reflection). A closure that is a function of the coarse field and commutes with these maps
(the filtered nonlinear term of 2-D Navier–Stokes does, for any isotropic filter) can be
learned from eight times as many samples by drawing a random element per training item.

Element ``e = 4 s + r`` (``r`` in 0..3, ``s`` in 0..1) acts on a point ``p = (x, y)`` as
``Q_e p = Rot^r Ref^s p`` with ``Ref (x, y) = (-x, y)`` and ``Rot (x, y) = (-y, x)``, all mod 1,
and on a field as ``(e . f)(p) = det(Q_e)^parity f(Q_e^{-1} p)``. Scalars (``parity = 0``, e.g. a
temperature) only move; pseudoscalars (``parity = 1``) also change sign under reflections: the
vorticity ``omega = d_x v - d_y u`` of a 2-D flow and every vorticity tendency (closure terms) are
pseudoscalars. Sparse measurement points move with the field; a point set that D4 maps onto
itself (e.g. a regular lattice ``i / m``) keeps its order after a permutation of the values.

Example:
    >>> import torch
    >>> w = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    >>> back = d4_apply(d4_apply(w, 5, parity=1), d4_inverse(5), parity=1)
    >>> bool(torch.equal(back, w))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._types import Conditioning, check_generator
from ..errors import ConfigError, ShapeError, format_error

__all__ = ["D4_ORDER", "d4_apply", "d4_points", "d4_inverse", "d4_compose", "d4_det", "D4Augment", "resolve_augment"]

D4_ORDER = 8
"""Number of elements of D4."""


def _check_element(e: int) -> int:
    if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < D4_ORDER:
        raise ConfigError(format_error("element", "an integer in 0..7 (4 * reflect + quarter turns)", repr(e)))
    return e


def _reflect_index(x: Tensor, dim: int) -> Tensor:
    """``y[i] = x[-i mod n]`` along ``dim`` (the map ``x -> -x`` of grid points ``i / n``)."""
    return torch.roll(torch.flip(x, [dim]), 1, dim)


def _rotate(x: Tensor) -> Tensor:
    """One quarter turn ``(e . f)(p) = f(Rot^{-1} p)``: ``g[i, j] = f[j, -i]``."""
    return _reflect_index(x.transpose(-1, -2), -2)


def d4_det(e: int) -> int:
    """Determinant of element ``e``'s linear map: ``-1`` for the four reflections, else ``1``."""
    return -1 if _check_element(e) >= 4 else 1


def d4_apply(x: Tensor, e: int, *, parity: int = 0) -> Tensor:
    """Apply element ``e`` to fields on the periodic square.

    Args:
        x: ``(..., n, n)`` fields, axis ``-2`` is ``x``, axis ``-1`` is ``y``.
        e: Element index in ``0..7``.
        parity: ``0`` scalar, ``1`` pseudoscalar (sign flip under reflections).

    Returns:
        The transformed fields, same shape.
    """
    _check_element(e)
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        raise ShapeError(format_error("x", "fields (..., n, n) on a square grid", f"shape {tuple(x.shape)}"))
    if parity not in (0, 1):
        raise ConfigError(format_error("parity", "0 (scalar) or 1 (pseudoscalar)", repr(parity)))
    y = _reflect_index(x, -2) if e >= 4 else x
    for _ in range(e % 4):
        y = _rotate(y)
    return -y if (parity and e >= 4) else y


def d4_points(points: Tensor, e: int) -> Tensor:
    """Map physical points ``(P, 2)`` in ``[0, 1)^2`` by element ``e`` (``Q_e p`` mod 1)."""
    _check_element(e)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ShapeError(format_error("points", "(P, 2) coordinates", f"shape {tuple(points.shape)}"))
    x, y = points[:, 0], points[:, 1]
    if e >= 4:
        x = -x
    for _ in range(e % 4):
        x, y = -y, x
    return torch.stack([x, y], 1).remainder(1.0)


def d4_compose(a: int, b: int) -> int:
    """The element ``a . b`` (apply ``b`` first), found by its action on a probe field."""
    probe = torch.arange(16.0).reshape(4, 4)
    target = d4_apply(d4_apply(probe, b), a)
    for c in range(D4_ORDER):
        if torch.equal(d4_apply(probe, c), target):
            return c
    raise AssertionError("D4 is closed under composition")  # pragma: no cover


def d4_inverse(e: int) -> int:
    """The inverse element of ``e`` (reflections are their own inverse)."""
    return e if _check_element(e) >= 4 else (4 - e) % 4


def _lattice_permutation(points: Tensor, e: int, tol: float = 1e-9) -> Tensor:
    """``perm`` with ``Q_e points[i] == points[perm[i]]``; raises if D4 does not map the set onto itself."""
    moved = d4_points(points.double(), e)
    d = (moved[:, None, :] - points.double()[None, :, :]).abs()
    d = torch.minimum(d, 1.0 - d).amax(-1)  # periodic distance per pair
    best, perm = d.min(1)
    if float(best.max()) > tol or len(set(perm.tolist())) != len(perm):
        raise ShapeError(format_error("obs_points", "a point set that D4 maps onto itself (e.g. a regular lattice)",
                                      f"{points.shape[0]} points that element {e} moves off the set",
                                      "augment without sparse measurements, or measure on a regular lattice"))
    return perm


class D4Augment:
    """Draw one random D4 element per item of a training batch and apply it to target and condition.

    Args:
        target_parity: Parity of every target channel (``1`` for vorticity tendencies).
        field_parity: Parity of the condition's field channels (``1`` for vorticity); history
            and sparse values use it too.
        elements: The elements drawn from (default all eight).

    Example:
        >>> import torch, stochclosure as sc
        >>> aug = D4Augment(target_parity=1, field_parity=1)
        >>> u, c = aug(torch.randn(4, 1, 8, 8), sc.Conditioning(fields=torch.randn(4, 1, 8, 8)),
        ...            torch.Generator().manual_seed(0))
        >>> tuple(u.shape)
        (4, 1, 8, 8)
    """

    def __init__(self, target_parity: int = 1, field_parity: int = 1, elements: Sequence[int] | None = None) -> None:
        for name, p in (("target_parity", target_parity), ("field_parity", field_parity)):
            if p not in (0, 1):
                raise ConfigError(format_error(name, "0 (scalar) or 1 (pseudoscalar)", repr(p)))
        self.target_parity, self.field_parity = int(target_parity), int(field_parity)
        self.elements = tuple(range(D4_ORDER)) if elements is None else tuple(_check_element(e) for e in elements)
        if not self.elements:
            raise ConfigError(format_error("elements", "at least one D4 element", "an empty list"))

    def spec(self) -> dict[str, object]:
        """JSON-able configuration (``resolve_augment`` rebuilds it)."""
        return {"type": "d4", "target_parity": self.target_parity, "field_parity": self.field_parity, "elements": list(self.elements)}

    def draw(self, n: int, generator: torch.Generator | None = None) -> list[int]:
        """``n`` random elements (one uniform integer each), e.g. for a whole global batch before sharding."""
        pick = torch.randint(len(self.elements), (n,), generator=check_generator(generator))
        return [self.elements[int(i)] for i in pick]

    def __call__(self, target: Tensor, cond: Conditioning, generator: torch.Generator | None = None,
                 elements: Sequence[int] | None = None) -> tuple[Tensor, Conditioning]:
        """Transform item ``i`` of the batch by a random element ``e_i``.

        Args:
            target: ``(B, C, n, n)``.
            cond: The batch's condition (fields ``(B, C_f, n, n)``, history ``(B, k, C_f, n, n)``,
                sparse values ``(B, C_o, P)`` at points shared by the batch).
            generator: Seeds the draw of the elements.
            elements: The elements to apply (``B`` of them) instead of drawing.

        Returns:
            ``(target, cond)`` transformed.
        """
        if target.dim() != 4:
            raise ShapeError(format_error("target", "(B, C, n, n) fields on a 2-D grid", f"shape {tuple(target.shape)}"))
        es = self.draw(target.shape[0], generator) if elements is None else [_check_element(e) for e in elements]
        if len(es) != target.shape[0]:
            raise ShapeError(format_error("elements", f"{target.shape[0]} elements (one per item)", str(len(es))))
        out_t = torch.stack([d4_apply(target[i], e, parity=self.target_parity) for i, e in enumerate(es)])

        def each(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            return torch.stack([d4_apply(x[i], e, parity=self.field_parity) for i, e in enumerate(es)])

        values = cond.obs_values
        if values is not None and cond.obs_points is not None:
            sign = [(-1.0 if (self.field_parity and e >= 4) else 1.0) for e in es]
            # the value measured at p moves to Q_e p = points[perm[i]]: new[perm[i]] = old[i]
            new = torch.empty_like(values)
            for i, e in enumerate(es):
                perm = _lattice_permutation(cond.obs_points, e)
                new[i][:, perm] = sign[i] * values[i]
            values = new
        cond = Conditioning(fields=each(cond.fields), history=each(cond.history), obs_values=values,
                            obs_points=cond.obs_points, features=cond.features)
        return out_t, cond


def resolve_augment(spec: Any) -> D4Augment | None:
    """``None``, a :class:`D4Augment`, ``"d4"`` or ``{"type": "d4", **options}`` -> an augmentation or ``None``."""
    if spec is None or isinstance(spec, D4Augment):
        return spec
    if spec == "d4":
        return D4Augment()
    if isinstance(spec, dict) and spec.get("type") == "d4":
        opts = {k: v for k, v in spec.items() if k != "type"}
        unknown = sorted(set(opts) - {"target_parity", "field_parity", "elements"})
        if unknown:
            raise ConfigError(format_error(f"augment.{unknown[0]}", "target_parity, field_parity or elements",
                                           repr(unknown[0])))
        return D4Augment(**opts)
    raise ConfigError(format_error("augment", "null, 'd4' or {'type': 'd4', target_parity, field_parity, elements}",
                                   repr(spec)))
