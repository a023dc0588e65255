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
  in blocks (optionally on a sub-lattice of points, with the weights interpolated in between).
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import Configurable, check_config_keys
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
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "config", {}).items())
        return f"{type(self).__name__}({args})"


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


def _corners(grid: tuple[int, ...], stride: int) -> tuple[Tensor, Tensor]:
    """Periodic linear interpolation from the lattice ``i * stride`` to every grid point.

    Returns ``idx`` ``(G, 2^d)`` (flat indices into the coarse lattice) and weights ``(G, 2^d)``.
    """
    per_axis = []
    for n in grid:
        j = torch.arange(n)
        k, t = j // stride, (j % stride).double() / stride
        per_axis.append((torch.stack([k, (k + 1) % (n // stride)], 1), torch.stack([1 - t, t], 1)))
    idx, wts = per_axis[0]
    for (ik, wk), n in zip(per_axis[1:], grid[1:]):
        idx = (idx[:, None, :, None] * (n // stride) + ik[None, :, None, :]).reshape(-1, idx.shape[1] * 2)
        wts = (wts[:, None, :, None] * wk[None, :, None, :]).reshape(-1, wts.shape[1] * 2)
    return idx, wts


class LETKF(AbstractEnsembleFilter):
    """Local ETKF: one ETKF per grid point with Gaspari–Cohn R-localisation (Hunt et al. 2007).

    At grid point ``g`` every observation ``o`` enters with inverse variance
    ``rho(|x_g - x_o|) / r_o`` (``rho`` the Gaspari–Cohn taper of half-width ``radius`` over
    the periodic distance); all channels of one grid point share the point's weights. The
    observations need positions (:meth:`~.AbstractObservation.locations`).

    Each point's analysis is ``x_i^a = mean + sum_j K[i, j] A_j`` with the ``M x M`` transform
    ``K = W + 1 w^T``. With ``weight_stride = s > 1`` the transforms are computed on the lattice of
    every ``s``-th grid point only and interpolated (periodic, linear) to the others: weight
    interpolation (Yang, Kalnay, Hunt & Bowler 2009, QJRMS 135, 251-262), ``s^d`` times fewer
    eigenproblems; exact at the lattice points and close elsewhere because the weights vary on
    the localisation scale, not the grid's: keep the lattice spacing ``s / n`` well below ``radius``
    (on 32^2 with 256 points and ``radius = 0.15`` the increments change by ~6 % for ``s = 2``,
    ~19 % for ``s = 4``). Interpolated transforms keep ``K 1 = 1`` (every convex combination does).

    Args:
        radius: Gaspari–Cohn half-width ``c`` in physical units of the unit period; observations
            farther than ``2 c`` from a point do not touch it.
        block: Grid points per batched block (default: sized to keep each block under ~32 MiB).
        weight_stride: Compute the weights at every ``s``-th grid point per axis and interpolate
            (1: at every point); must divide the grid.
        gram: How the local ``M x M`` Gram matrices are formed: ``"dense"`` (one matrix product
            over all observations, fast when a point sees a good part of them), ``"local"``
            (gathering each point's observations inside the taper's support, for many observations
            and a short radius, or fewer local observations than members: its eigenproblems are
            ``L x L``) or ``"auto"`` (dense when a point sees at least 1/8 of them and at least ``M``).
            Both give the same analysis to round-off.
    """

    registry_name: ClassVar[str | None] = "letkf"

    def __init__(self, radius: float, block: int | None = None, weight_stride: int = 1, gram: str = "auto") -> None:
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (0 < radius < math.inf):
            raise ConfigError(format_error("radius", "a positive localisation half-width (fraction of the period)",
                                           repr(radius)))
        for name, val in (("block", block), ("weight_stride", weight_stride)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
                raise ConfigError(format_error(name, "a positive integer", repr(val)))
        if gram not in ("auto", "dense", "local"):
            raise ConfigError(format_error("gram", "'auto', 'dense' or 'local'", repr(gram)))
        self.radius, self.block, self.weight_stride, self.gram = float(radius), block, weight_stride, gram
        self._taper: tuple[Any, Tensor, Tensor] | None = None          # the last geometry: cycles repeat it

    def _obs_locations(self, event_shape: tuple[int, ...], op: AbstractObservation) -> Tensor:
        obs_loc = op.locations(event_shape)
        if obs_loc is None:
            raise ConfigError(format_error("op", "an observation operator with locations (for the LETKF)",
                                           f"{type(op).__name__} without positions",
                                           "pass locations= to LinearObservation, or use the ETKF"))
        grid = tuple(int(n) for n in event_shape[1:])
        if not grid or obs_loc.shape[1] != len(grid):
            raise ShapeError(format_error("op", f"observation positions in {len(grid)} dimension(s) (the state's grid "
                                                f"{grid})", f"positions of shape {tuple(obs_loc.shape)}"))
        return obs_loc

    def taper(self, event_shape: tuple[int, ...], op: AbstractObservation, stride: int = 1) -> Tensor:
        """Localisation weights ``rho`` ``(G, p)`` between the grid points (every ``stride``-th) and the observations."""
        obs_loc = self._obs_locations(event_shape, op)
        grid = tuple(int(n) for n in event_shape[1:])
        key = (grid, stride, self.radius)
        if self._taper is not None and self._taper[0] == key and torch.equal(self._taper[1], obs_loc):
            return self._taper[2]
        pts = grid_points(tuple(n // stride for n in grid))                      # k / (n / s): the points k s
        rho = gaspari_cohn(periodic_distance(pts, obs_loc), self.radius)
        self._taper = (key, obs_loc.clone(), rho)
        return rho

    def analyse(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
                generator: torch.Generator | None = None) -> Tensor:
        event, a, xm, hx, y, r = self._moments(ensemble, obs_values, op)
        grid = tuple(int(n) for n in event[1:])
        s = self.weight_stride
        if s > 1 and any(n % s for n in grid):
            raise ConfigError(format_error("weight_stride", f"a divisor of every grid size {grid}", repr(s)))
        rho = self.taper(event, op, s).to(hx)                                    # (G_s, p) at the weight points
        m, c = a.shape[0], event[0]
        g = math.prod(grid)
        a3 = a.reshape(m, c, g).permute(2, 0, 1)                                  # (G, M, C)
        xm3 = xm.reshape(c, g).T                                                  # (G, C)
        yb = hx - hx.mean(0)                                                      # (M, p)
        d = y - hx.mean(0)                                                        # (p,)
        n_local = int((rho > 0).sum(1).max())
        if n_local == 0:
            return ensemble.clone()
        p = rho.shape[1]
        block = self.block or max(1, (2**22) // (m * max(n_local, m, c)))
        eye = torch.eye(m, dtype=hx.dtype, device=hx.device)
        # many local observations: Z Z^T = sum_o (rho_o / r_o) y_o y_o^T / (M - 1) for all points in one GEMM;
        # fewer local observations than members: the L x L eigenproblems of the local path are the cheaper ones
        # (the batched eigh dominates the cost: ~3x faster for L = 18, M = 32)
        dense = self.gram == "dense" or (self.gram == "auto" and n_local >= m and 8 * n_local >= p
                                         and p * m * m <= 2**24)
        outer = (yb.T[:, :, None] * yb.T[:, None, :]).reshape(p, m * m) if dense else None

        def transforms(lo: int, hi: int) -> Tensor:                              # K = W + 1 w^T, (b, M, M)
            if outer is not None:
                q = rho[lo:hi] / r                                                # (b, p)
                lam, u = torch.linalg.eigh((q @ outer).reshape(hi - lo, m, m) / (m - 1))
                lam = lam.clamp_min(0.0)
                zs = ((q * d) @ yb.T) / (m - 1)                                   # Z s, (b, M)
                w = (u @ ((u.mT @ zs[..., None])[..., 0] / (1.0 + lam))[..., None])[..., 0]
                return (u * (1.0 + lam).rsqrt()[:, None, :]) @ u.mT + w[:, None, :]
            wts, idx = torch.topk(rho[lo:hi], n_local, dim=1)                     # (b, L): the local observations
            scale = (wts / r[idx]).sqrt() / math.sqrt(m - 1)                       # (b, L)
            z = yb[:, idx].permute(1, 0, 2) * scale[:, None, :]                   # (b, M, L)
            w, transform = _sqrt_weights(z, d[idx] * scale)
            return transform(eye.expand(hi - lo, m, m)) + w[:, None, :]

        out = torch.empty_like(a3)
        if s == 1:
            for lo in range(0, g, block):
                hi = min(lo + block, g)
                out[lo:hi] = xm3[lo:hi, None, :] + transforms(lo, hi) @ a3[lo:hi]
        else:
            gs = rho.shape[0]
            k_s = torch.cat([transforms(lo, min(lo + block, gs)) for lo in range(0, gs, block)])  # (G_s, M, M)
            idx, wts = _corners(grid, s)
            wts = wts.to(hx)
            out[:] = xm3[:, None, :]
            per = s ** len(grid)                                  # fine points per lattice point and corner
            for corner in range(idx.shape[1]):
                # each lattice transform acts on the anomalies of the fine points that have it as this corner
                order = torch.argsort(idx[:, corner], stable=True)
                ab = a3[order].reshape(gs, per, m, c).permute(0, 2, 1, 3).reshape(gs, m, per * c)
                inc = (k_s @ ab).reshape(gs, m, per, c).permute(0, 2, 1, 3).reshape(g, m, c)
                out[order] += wts[order, corner][:, None, None] * inc
        return out.permute(1, 2, 0).reshape(ensemble.shape).to(ensemble.dtype)


FILTERS: dict[str, type[AbstractEnsembleFilter]] = {"enkf": EnKF, "etkf": ETKF, "letkf": LETKF}
"""Ensemble filters by name (the ``type`` of a spec)."""


def filter_from_spec(spec: AbstractEnsembleFilter | str | dict[str, Any]) -> AbstractEnsembleFilter:
    """A filter from a name, ``{"type": name, **kwargs}`` (names of :data:`FILTERS`), or as given."""
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
