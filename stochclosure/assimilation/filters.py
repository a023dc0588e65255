"""Ensemble Kalman analyses: stochastic EnKF, ETKF and LETKF, batched over members.

Every filter maps a forecast ensemble ``(M, *state)`` and observations ``y`` ``(p,)`` of an
operator ``H`` with noise covariance ``R = diag(r)`` to an analysis ensemble of the same shape.
The algebra runs in float64 in *ensemble space*: with the anomalies ``A`` ``(M, n)`` (members
minus their mean), ``Y = H(x_i) - mean`` ``(M, p)`` and the scaled anomalies
``Z = Y R^{-1/2} / sqrt(M - 1)``, only Gram matrices of the smaller of ``M`` and ``p`` are
factorised, so a 3200-member ensemble with three observations costs a 3 x 3 eigenproblem.

* :class:`EnKF` (Burgers, van Leeuwen & Evensen 1998; Houtekamer & Mitchell 1998): every member
  assimilates observations perturbed by its own draw of ``N(0, R)``;
  ``x_i^a = x_i + K (y + eps_i - H x_i)``, ``K = A^T Z (Z^T Z + I)^{-1} R^{-1/2} / sqrt(M - 1)``.
* :class:`ETKF` (Bishop, Etherton & Majumdar 2001, in the symmetric form of Hunt, Kostelich &
  Szunyogh 2007): deterministic square root. ``w = (I + Z Z^T)^{-1} Z R^{-1/2} d / sqrt(M - 1)``
  for the mean (``d = y - mean H x``) and ``W = (I + Z Z^T)^{-1/2}`` (symmetric, so the
  analysis mean is exactly ``mean + w A`` and the analysis covariance is the Kalman filter's
  for the ensemble's own prior covariance).
* :class:`LETKF` (Hunt et al. 2007): one ETKF per grid point with the observations' inverse
  variances tapered by the Gaspari–Cohn function of their periodic distance to the point
  (R-localisation); all grid points are solved as one batch of small ensemble-space problems,
  in blocks, with only the observations inside the taper's support gathered for each point.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import Configurable
from ..encoders.sparse import grid_points
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error
from .localization import gaspari_cohn, periodic_distance
from .observations import AbstractObservation

__all__ = ["AbstractEnsembleFilter", "EnKF", "ETKF", "LETKF", "FILTERS", "filter_from_spec", "check_ensemble"]


def check_ensemble(ensemble: Tensor, op: AbstractObservation, name: str = "ensemble") -> tuple[int, ...]:
    """Check an ensemble ``(M, *state)`` (``M >= 2``, finite, floating) against ``op``; returns ``state``."""
    if not isinstance(op, AbstractObservation):
        raise ConfigError(format_error("op", "an observation operator (AbstractObservation)", type(op).__name__))
    if not isinstance(ensemble, Tensor) or not ensemble.is_floating_point():
        got = str(ensemble.dtype) if isinstance(ensemble, Tensor) else type(ensemble).__name__
        raise ShapeError(format_error(name, "a floating-point tensor (members, *state)", got))
    event = op.event_shape_of(ensemble, name)
    if ensemble.dim() != len(event) + 1:
        raise ShapeError(format_error(name, f"a tensor (members, {', '.join(map(str, event))}): one member axis, "
                                            "then one state", f"shape {tuple(ensemble.shape)}",
                                      "flatten extra batch axes into the member axis or analyse each case apart"))
    if ensemble.shape[0] < 2:
        raise ShapeError(format_error(name, "at least 2 members (anomalies need two)", f"{ensemble.shape[0]} member"))
    if not bool(torch.isfinite(ensemble).all()):
        raise NonFiniteError(format_error(name, "finite members", "NaN or inf entries",
                                          "the forecast diverged; increase inflation or shorten the cycle"))
    return event


def _sqrt_weights(z: Tensor, s: Tensor) -> tuple[Tensor, Any]:
    """Mean weights ``w = (I + Z Z^T)^{-1} Z s`` ``(B, M)`` and ``T A = (I + Z Z^T)^{-1/2} A``.

    ``z`` ``(B, M, L)``, ``s`` ``(B, L)``. Factorises the smaller Gram matrix; with ``L < M`` uses
    ``(I + Z Z^T)^{-a} = I + Z V diag(((1 + l)^{-a} - 1) / l) V^T Z^T`` (``Z^T Z = V diag(l) V^T``),
    written without dividing by ``l``.
    """
    b, m, p = z.shape
    zs = (z @ s[..., None])[..., 0]                                             # (B, M)
    if p < m:
        lam, v = torch.linalg.eigh(z.mT @ z)
        lam = lam.clamp_min(0.0)
        zv = z @ v                                                              # (B, M, L)
        f1 = -1.0 / (1.0 + lam)
        root = torch.sqrt(1.0 + lam)
        fh = -1.0 / (root * (1.0 + root))
        w = zs + (zv @ (f1 * (zv.mT @ zs[..., None])[..., 0])[..., None])[..., 0]

        def transform(a: Tensor) -> Tensor:
            return a + zv @ (fh[..., None] * (zv.mT @ a))
    else:
        lam, u = torch.linalg.eigh(z @ z.mT)
        lam = lam.clamp_min(0.0)
        w = (u @ ((u.mT @ zs[..., None])[..., 0] / (1.0 + lam))[..., None])[..., 0]
        g = (1.0 + lam).rsqrt()

        def transform(a: Tensor) -> Tensor:
            return u @ (g[..., None] * (u.mT @ a))
    return w, transform


class AbstractEnsembleFilter(Configurable, abc.ABC):
    """An ensemble analysis ``(M, *state) -> (M, *state)`` given observations and their operator."""

    registry_name: ClassVar[str | None] = None
    stochastic: ClassVar[bool] = False
    """The analysis draws random numbers (pass ``generator``)."""

    @abc.abstractmethod
    def analyse(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
                generator: torch.Generator | None = None) -> Tensor:
        """The analysis ensemble.

        Args:
            ensemble: Forecast ensemble ``(M, *state)``, ``M >= 2``.
            obs_values: Observations ``(p,)`` of the truth.
            op: Their operator (with the noise std).
            generator: Random source of stochastic filters.

        Returns:
            ``(M, *state)`` in ``ensemble``'s dtype.
        """

    def _moments(self, ensemble: Tensor, obs_values: Tensor,
                 op: AbstractObservation) -> tuple[tuple[int, ...], Tensor, Tensor, Tensor, Tensor, Tensor]:
        event = check_ensemble(ensemble, op)
        y = op.check_values(obs_values, event).double()
        x = ensemble.double().reshape(ensemble.shape[0], -1)
        hx = op.apply(ensemble.double())
        r = op.variance(event).to(hx)
        xm = x.mean(0)
        return event, x - xm, xm, hx, y.to(hx), r

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"


class EnKF(AbstractEnsembleFilter):
    """Stochastic ensemble Kalman filter with perturbed observations (Burgers et al. 1998).

    Args:
        centred: Remove the members' mean from the observation perturbations, so that the
            analysis mean is exactly the Kalman update of the forecast mean with the ensemble's gain.
    """

    registry_name: ClassVar[str | None] = "enkf"
    stochastic: ClassVar[bool] = True

    def __init__(self, centred: bool = False) -> None:
        self.centred = bool(centred)

    def analyse(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
                generator: torch.Generator | None = None) -> Tensor:
        event, a, xm, hx, y, r = self._moments(ensemble, obs_values, op)
        m = a.shape[0]
        eps = torch.randn(hx.shape, generator=generator, dtype=torch.float64).to(hx) * r.sqrt()
        if self.centred:
            eps = eps - eps.mean(0)
        isr = r.rsqrt()
        z = (hx - hx.mean(0)) * isr / math.sqrt(m - 1)                           # (M, p)
        ds = (y + eps - hx) * isr / math.sqrt(m - 1)                              # (M, p)
        p = z.shape[1]
        if p <= m:                                   # Ds (Z^T Z + I)^{-1} Z^T A: a p x p system
            gram = z.T @ z + torch.eye(p, dtype=z.dtype, device=z.device)
            xa = xm + a + torch.linalg.solve(gram, ds.T).T @ (z.T @ a)
        else:                                        # Ds Z^T (Z Z^T + I)^{-1} A: an M x M system
            gram = z @ z.T + torch.eye(m, dtype=z.dtype, device=z.device)
            xa = xm + a + torch.linalg.solve(gram, z @ ds.T).T @ a
        return xa.reshape(ensemble.shape).to(ensemble.dtype)


class ETKF(AbstractEnsembleFilter):
    """Ensemble transform Kalman filter with the symmetric square root (Hunt et al. 2007)."""

    registry_name: ClassVar[str | None] = "etkf"

    def analyse(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
                generator: torch.Generator | None = None) -> Tensor:
        event, a, xm, hx, y, r = self._moments(ensemble, obs_values, op)
        m = a.shape[0]
        isr = r.rsqrt()
        z = ((hx - hx.mean(0)) * isr / math.sqrt(m - 1))[None]
        s = ((y - hx.mean(0)) * isr / math.sqrt(m - 1))[None]
        w, transform = _sqrt_weights(z, s)
        xa = xm + w[0] @ a + transform(a[None])[0]
        return xa.reshape(ensemble.shape).to(ensemble.dtype)


class LETKF(AbstractEnsembleFilter):
    """Local ETKF: one ETKF per grid point with Gaspari–Cohn R-localisation (Hunt et al. 2007).

    At grid point ``g`` every observation ``o`` enters with inverse variance
    ``rho(|x_g - x_o|) / r_o`` (``rho`` the Gaspari–Cohn taper of half-width ``radius`` over
    the periodic distance); all channels of one grid point share the point's weights. The
    observations need positions (:meth:`~.AbstractObservation.locations`).

    Args:
        radius: Gaspari–Cohn half-width ``c`` in physical units of the unit period; observations
            farther than ``2 c`` from a point do not touch it.
        block: Grid points per batched block (default: sized to keep each block under ~32 MiB).
    """

    registry_name: ClassVar[str | None] = "letkf"

    def __init__(self, radius: float, block: int | None = None) -> None:
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (0 < radius < math.inf):
            raise ConfigError(format_error("radius", "a positive localisation half-width (fraction of the period)",
                                           repr(radius)))
        if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
            raise ConfigError(format_error("block", "None or a positive integer", repr(block)))
        self.radius, self.block = float(radius), block

    def taper(self, event_shape: tuple[int, ...], op: AbstractObservation) -> Tensor:
        """Localisation weights ``rho`` ``(G, p)`` between the ``G`` grid points and the observations."""
        obs_loc = op.locations(event_shape)
        if obs_loc is None:
            raise ConfigError(format_error("op", "an observation operator with locations (for the LETKF)",
                                           f"{type(op).__name__} without positions",
                                           "pass locations= to LinearObservation, or use the ETKF"))
        grid = tuple(int(n) for n in event_shape[1:])
        if not grid or obs_loc.shape[1] != len(grid):
            raise ShapeError(format_error("op", f"observation positions in {len(grid)} dimension(s) (the state's grid "
                                                f"{grid})", f"positions of shape {tuple(obs_loc.shape)}"))
        return gaspari_cohn(periodic_distance(grid_points(grid), obs_loc), self.radius)

    def analyse(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
                generator: torch.Generator | None = None) -> Tensor:
        event, a, xm, hx, y, r = self._moments(ensemble, obs_values, op)
        rho = self.taper(event, op).to(hx)                                       # (G, p)
        m, c, g = a.shape[0], event[0], rho.shape[0]
        a3 = a.reshape(m, c, g).permute(2, 0, 1)                                  # (G, M, C)
        xm3 = xm.reshape(c, g).T                                                  # (G, C)
        yb = hx - hx.mean(0)                                                      # (M, p)
        d = y - hx.mean(0)                                                        # (p,)
        n_local = int((rho > 0).sum(1).max())
        out = torch.empty_like(a3)
        if n_local == 0:
            out = xm3[:, None, :] + a3
        else:
            block = self.block or max(1, (2**22) // max(m * max(n_local, m, c), 1))
            for lo in range(0, g, block):
                hi = min(lo + block, g)
                wts, idx = torch.topk(rho[lo:hi], n_local, dim=1)                 # (b, L): the local observations
                scale = (wts / r[idx]).sqrt() / math.sqrt(m - 1)                   # (b, L)
                z = yb[:, idx].permute(1, 0, 2) * scale[:, None, :]               # (b, M, L)
                w, transform = _sqrt_weights(z, d[idx] * scale)
                ab = a3[lo:hi]
                out[lo:hi] = xm3[lo:hi, None, :] + (w[..., None] * ab).sum(1, keepdim=True) + transform(ab)
        xa = out.permute(1, 2, 0).reshape(ensemble.shape)
        return xa.to(ensemble.dtype)


FILTERS: dict[str, type[AbstractEnsembleFilter]] = {"enkf": EnKF, "etkf": ETKF, "letkf": LETKF}
"""Ensemble filters by name (the ``type`` of a spec)."""


def filter_from_spec(spec: AbstractEnsembleFilter | str | dict[str, Any]) -> AbstractEnsembleFilter:
    """A filter from a name, ``{"type": name, **kwargs}`` (names of :data:`FILTERS`), or as given."""
    from ..config import check_config_keys

    if isinstance(spec, AbstractEnsembleFilter):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type") not in FILTERS:
        got = repr(spec.get("type")) if isinstance(spec, dict) else type(spec).__name__
        raise ConfigError(format_error("filter", f"a filter, a name or a spec with type in {sorted(FILTERS)}", got))
    cls = FILTERS[spec["type"]]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    check_config_keys(cls, kwargs, "filter")
    return cls(**kwargs)
