"""Observation operators ``y = H(x) + eps``, ``eps ~ N(0, R)`` with a diagonal ``R``.

Every operator maps a state ``(..., C, *grid)`` (any leading batch axes: members, cases, time)
to observations ``(..., p)`` and carries its Gaussian noise: ``std`` is one number or one value
per observation. Every built-in operator is linear, so :meth:`AbstractObservation.matrix` gives
its dense ``H`` (for the Kalman filter and tests) and localised filters read the observations'
physical positions from :meth:`AbstractObservation.locations`.

* :class:`PointObservation`: channels of a periodic field at physical points of ``[0, 1)^d``
  (``d = 1, 2``), by trigonometric (spectral) interpolation or periodic linear interpolation.
  Points are physical, so one operator observes a fine truth and a coarse forecast alike.
* :class:`GridObservation`: every ``k``-th grid point per axis (``every=1``: all of them; the
  Lorenz-96 ``X`` ring is a 1-D field ``(1, K)``).
* :class:`FullFieldObservation`: the whole noisy field.
* :class:`LinearObservation`: any matrix ``H`` ``(p, n)`` acting on the flattened state.

Observations are ordered channel-major: all points of the first observed channel, then the next.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as pdist
import torch
from torch import Tensor

from ..config import Configurable, check_config_keys, from_jsonable
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error

__all__ = [
    "AbstractObservation",
    "PointObservation",
    "GridObservation",
    "FullFieldObservation",
    "LinearObservation",
    "sample_observations",
    "periodic_weights",
    "OBSERVATIONS",
    "observation_from_spec",
]

METHODS = ("spectral", "linear")


def _check_std(std: Any) -> float | Tensor:
    if isinstance(std, bool):
        raise ConfigError(format_error("std", "a positive number or a 1-D tensor of positive stds", repr(std)))
    if isinstance(std, (int, float)):
        if not (math.isfinite(std) and std > 0):
            raise ConfigError(format_error("std", "a positive, finite noise std", repr(std),
                                           "observations without noise make R singular; use a small std"))
        return float(std)
    t = torch.as_tensor(std, dtype=torch.float64) if not isinstance(std, Tensor) else std.detach().double()
    if t.dim() != 1 or t.numel() == 0:
        raise ShapeError(format_error("std", "a number or a 1-D tensor (p,) of per-observation stds",
                                      f"shape {tuple(t.shape)}"))
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ConfigError(format_error("std", "positive, finite per-observation stds",
                                       f"min {float(t.min()):.3g}", "every observation needs some noise"))
    return t.cpu()


def _channels(channels: Any) -> tuple[int, ...] | None:
    if channels is None:
        return None
    if isinstance(channels, int) and not isinstance(channels, bool):
        channels = (channels,)
    try:
        out = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise ConfigError(format_error("channels", "None (all) or a list of channel indices", repr(channels))) from None
    if not out or any(c < 0 for c in out) or len(set(out)) != len(out):
        raise ConfigError(format_error("channels", "distinct non-negative channel indices", repr(channels)))
    return out


class AbstractObservation(Configurable, abc.ABC):
    """An observation operator with Gaussian noise of diagonal covariance ``R = diag(std^2)``.

    Subclasses implement :meth:`apply`, :meth:`n_obs` and :meth:`locations`; ``spatial_dims`` is
    the number of trailing grid axes of a state ``(..., C, *grid)``.

    Args:
        std: Noise std, one number or a 1-D tensor ``(p,)`` (one per observation).
    """

    registry_name: ClassVar[str | None] = None
    spatial_dims: int = 1

    def __init__(self, std: float | Tensor | Sequence[float] = 1.0) -> None:
        self.std = _check_std(std)

    # -- interface --------------------------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, state: Tensor) -> Tensor:
        """``H(state)``: ``(..., C, *grid) -> (..., p)`` in the state's dtype."""

    @abc.abstractmethod
    def n_obs(self, event_shape: Sequence[int]) -> int:
        """Number of observations ``p`` of one state of shape ``event_shape = (C, *grid)``."""

    def locations(self, event_shape: Sequence[int]) -> Tensor | None:
        """Physical positions ``(p, d)`` in ``[0, 1)^d`` (float64), or ``None`` if they have none."""
        return None

    # -- shared ------------------------------------------------------------------------------------
    def event_shape_of(self, state: Tensor, name: str = "state") -> tuple[int, ...]:
        """The event shape ``(C, *grid)`` of ``state`` ``(..., C, *grid)``, checked."""
        k = self.spatial_dims + 1
        if not isinstance(state, Tensor) or state.dim() < k:
            got = f"shape {tuple(state.shape)}" if isinstance(state, Tensor) else type(state).__name__
            raise ShapeError(format_error(name, f"a tensor (..., C, *grid) with {self.spatial_dims} grid axes", got))
        if not state.is_floating_point():
            raise ShapeError(format_error(name, "a floating-point state", str(state.dtype)))
        return tuple(state.shape[-k:])

    def std_vector(self, event_shape: Sequence[int]) -> Tensor:
        """Per-observation noise std ``(p,)`` (float64)."""
        p = self.n_obs(event_shape)
        if isinstance(self.std, float):
            return torch.full((p,), self.std, dtype=torch.float64)
        if self.std.numel() != p:
            raise ShapeError(format_error("std", f"{p} per-observation stds (this operator's p for a state "
                                                 f"{tuple(event_shape)})", f"{self.std.numel()} values",
                                          "pass one std per observation, or a single number"))
        return self.std

    def variance(self, event_shape: Sequence[int]) -> Tensor:
        """Diagonal of ``R``, ``(p,)`` float64."""
        return self.std_vector(event_shape) ** 2

    def matrix(self, event_shape: Sequence[int]) -> Tensor:
        """Dense ``H`` ``(p, n)`` in float64, ``n = prod(event_shape)`` (the operator applied to a basis)."""
        event_shape = tuple(int(s) for s in event_shape)
        n = math.prod(event_shape)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *event_shape)
        return self.apply(basis).T.contiguous()

    def likelihood(self, state: Tensor) -> pdist.Distribution:
        """``N(H(state), R)`` as a pyro distribution with event shape ``(p,)``.

        Batch shape = ``state``'s leading axes; use it as ``pyro.sample(name, op.likelihood(x), obs=y)``.
        """
        event = self.event_shape_of(state)
        loc = self.apply(state)
        return pdist.Normal(loc, self.std_vector(event).to(loc)).to_event(1)

    def sample(self, state: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``H(state) + eps`` with ``eps ~ N(0, R)`` (drawn in float64, then cast), ``(..., p)``."""
        event = self.event_shape_of(state)
        clean = self.apply(state)
        eps = torch.randn(clean.shape, generator=generator, dtype=torch.float64) * self.std_vector(event)
        return (clean.double() + eps.to(clean.device)).to(clean.dtype)

    def check_values(self, obs_values: Tensor, event_shape: Sequence[int], name: str = "obs_values") -> Tensor:
        """Check observed values ``(p,)`` for a state of ``event_shape``; returns them unchanged."""
        p = self.n_obs(event_shape)
        if not isinstance(obs_values, Tensor) or obs_values.dim() != 1 or obs_values.shape[0] != p:
            got = f"shape {tuple(obs_values.shape)}" if isinstance(obs_values, Tensor) else type(obs_values).__name__
            raise ShapeError(format_error(name, f"a tensor ({p},): this operator's observations of one state "
                                                f"{tuple(event_shape)}", got))
        if not bool(torch.isfinite(obs_values).all()):
            raise NonFiniteError(format_error(name, "finite observed values", "NaN or inf entries",
                                              "drop missing observations from the operator instead"))
        return obs_values

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.spec().items() if k != 'type')})"


# -- point observations ---------------------------------------------------------------------------------
def periodic_weights(x: Tensor, n: int, method: str = "spectral") -> Tensor:
    """Interpolation weights ``(P, n)`` of a periodic 1-D grid ``j / n`` at coordinates ``x`` ``(P,)``.

    ``f(x) = sum_j w[., j] f_j``. ``"spectral"``: the real trigonometric interpolant (all modes
    ``|k| < n / 2`` plus, for even ``n``, the Nyquist cosine), whose kernel is
    ``w(delta) = (1 / n) sum_k c_k cos(2 pi k delta)``; exact at the grid points and for every
    band-limited field below the Nyquist wavenumber. ``"linear"``: periodic hat functions.

    Args:
        x: Coordinates (any real; read modulo 1), float64.
        n: Grid points.
        method: ``"spectral"`` or ``"linear"``.

    Returns:
        ``(P, n)`` float64 weights (each row sums to 1).
    """
    j = torch.arange(n, dtype=torch.float64, device=x.device) / n
    delta = torch.remainder(x.double()[:, None] - j[None, :] + 0.5, 1.0) - 0.5  # minimum image, in [-1/2, 1/2)
    if method == "linear":
        return (1.0 - (delta * n).abs()).clamp_min(0.0)
    kmax = n // 2
    k = torch.arange(kmax + 1, dtype=torch.float64, device=x.device)
    c = torch.full((kmax + 1,), 2.0, dtype=torch.float64, device=x.device)
    c[0] = 1.0
    if n % 2 == 0:
        c[kmax] = 1.0
    return (c * torch.cos(2 * math.pi * delta[..., None] * k)).sum(-1) / n


class PointObservation(AbstractObservation):
    """Channels of a periodic field observed at physical points (interpolated between grid points).

    Args:
        points: ``(P, d)`` coordinates in ``[0, 1)^d`` (read modulo 1), ``d`` = 1 or 2.
        std: Noise std: a number, or ``(len(channels) * P,)`` values.
        channels: Observed channels (default: all).
        method: ``"spectral"`` (trigonometric interpolation, exact for band-limited fields) or
            ``"linear"`` (periodic linear / bilinear interpolation).

    Shapes:
        ``(..., C, *grid) -> (..., c * P)`` with ``c`` the observed channels, channel-major.
    """

    registry_name: ClassVar[str | None] = "points"

    def __init__(self, points: Tensor | Sequence[Sequence[float]], std: float | Tensor | Sequence[float] = 1.0,
                 channels: int | Sequence[int] | None = None, method: str = "spectral") -> None:
        super().__init__(std)
        pts = torch.as_tensor(points, dtype=torch.float64) if not isinstance(points, Tensor) else points.double()
        if pts.dim() == 1:
            pts = pts[:, None]
        if pts.dim() != 2 or pts.shape[1] not in (1, 2) or pts.shape[0] == 0:
            raise ShapeError(format_error("points", "a tensor (P, d) of P >= 1 physical points, d = 1 or 2",
                                          f"shape {tuple(pts.shape)}"))
        if not bool(torch.isfinite(pts).all()):
            raise NonFiniteError(format_error("points", "finite coordinates", "NaN or inf coordinates"))
        if method not in METHODS:
            raise ConfigError(format_error("method", f"one of {METHODS}", repr(method)))
        self.points = torch.remainder(pts.detach().cpu(), 1.0)
        self.channels, self.method = _channels(channels), method
        self.spatial_dims = int(pts.shape[1])
        self._weights: dict[Any, list[Tensor]] = {}

    def _chan(self, c: int) -> tuple[int, ...]:
        chans = tuple(range(c)) if self.channels is None else self.channels
        if max(chans) >= c:
            raise ShapeError(format_error("state", f"at least {max(chans) + 1} channels (observed: {list(chans)})",
                                          f"{c} channels"))
        return chans

    def n_obs(self, event_shape: Sequence[int]) -> int:
        return len(self._chan(int(event_shape[0]))) * self.points.shape[0]

    def locations(self, event_shape: Sequence[int]) -> Tensor:
        return self.points.repeat(len(self._chan(int(event_shape[0]))), 1)

    def weights(self, grid: Sequence[int], dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> list[Tensor]:
        """Per-axis weights ``[(P, n_0), (P, n_1)]`` for ``grid`` (cached)."""
        key = (tuple(grid), dtype, str(device))
        if key not in self._weights:
            self._weights[key] = [periodic_weights(self.points[:, i], int(n), self.method).to(device=device,
                                                                                               dtype=dtype)
                                  for i, n in enumerate(grid)]
        return self._weights[key]

    def apply(self, state: Tensor) -> Tensor:
        event = self.event_shape_of(state)
        chans = self._chan(event[0])
        field = state[..., list(chans), :] if self.spatial_dims == 1 else state[..., list(chans), :, :]
        w = self.weights(event[1:], state.dtype, state.device)
        if self.spatial_dims == 1:
            out = field @ w[0].T                                   # (..., c, P)
        else:
            tmp = field @ w[1].T                                   # (..., c, n0, P): contract the last axis
            out = (tmp * w[0].T).sum(-2)                           # (..., c, P)
        return out.reshape(*out.shape[:-2], -1)


# -- grid observations --------------------------------------------------------------------------------
class GridObservation(AbstractObservation):
    """Every ``every``-th grid point per axis (from ``offset``) of the chosen channels.

    Args:
        every: Stride per grid axis (1: all points).
        std: Noise std: a number or one value per observation.
        offset: First observed index per axis.
        channels: Observed channels (default: all).
        spatial_dims: Grid axes of the state (1: a ring such as Lorenz-96's ``X`` ``(1, K)``; 2: a torus).

    Shapes:
        ``(..., C, *grid) -> (..., c * prod(ceil((n_i - offset) / every)))``.
    """

    registry_name: ClassVar[str | None] = "grid"

    def __init__(self, every: int = 1, std: float | Tensor | Sequence[float] = 1.0, offset: int = 0,
                 channels: int | Sequence[int] | None = None, spatial_dims: int = 1) -> None:
        super().__init__(std)
        for name, val, low in (("every", every, 1), ("offset", offset, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ConfigError(format_error(name, f"an integer >= {low}", repr(val)))
        if spatial_dims not in (1, 2):
            raise ConfigError(format_error("spatial_dims", "1 or 2", repr(spatial_dims)))
        self.every, self.offset, self.channels, self.spatial_dims = every, offset, _channels(channels), spatial_dims

    def _chan(self, c: int) -> tuple[int, ...]:
        chans = tuple(range(c)) if self.channels is None else self.channels
        if max(chans) >= c:
            raise ShapeError(format_error("state", f"at least {max(chans) + 1} channels (observed: {list(chans)})",
                                          f"{c} channels"))
        return chans

    def _index(self, grid: Sequence[int]) -> list[Tensor]:
        if any(self.offset >= n for n in grid):
            raise ShapeError(format_error("state", f"grid axes longer than offset={self.offset}", f"grid {tuple(grid)}"))
        return [torch.arange(self.offset, n, self.every) for n in grid]

    def n_obs(self, event_shape: Sequence[int]) -> int:
        return len(self._chan(int(event_shape[0]))) * math.prod(len(i) for i in self._index(event_shape[1:]))

    def locations(self, event_shape: Sequence[int]) -> Tensor:
        grid = tuple(int(n) for n in event_shape[1:])
        idx = self._index(grid)
        axes = [i.double() / n for i, n in zip(idx, grid)]
        mesh = torch.meshgrid(*axes, indexing="ij")
        pts = torch.stack([m.reshape(-1) for m in mesh], 1)
        return pts.repeat(len(self._chan(int(event_shape[0]))), 1)

    def apply(self, state: Tensor) -> Tensor:
        event = self.event_shape_of(state)
        chans = list(self._chan(event[0]))
        idx = self._index(event[1:])
        if self.spatial_dims == 1:
            out = state[..., chans, :][..., idx[0]]
        else:
            out = state[..., chans, :, :][..., idx[0][:, None], idx[1][None, :]]
        return out.reshape(*state.shape[:-len(event)], -1)


class FullFieldObservation(GridObservation):
    """The whole field (all grid points of the chosen channels) with noise.

    Args:
        std: Noise std: a number or one value per grid point and channel.
        channels: Observed channels (default: all).
        spatial_dims: Grid axes of the state (1 or 2).
    """

    registry_name: ClassVar[str | None] = "field"

    def __init__(self, std: float | Tensor | Sequence[float] = 1.0, channels: int | Sequence[int] | None = None,
                 spatial_dims: int = 2) -> None:
        super().__init__(every=1, std=std, offset=0, channels=channels, spatial_dims=spatial_dims)


# -- any linear operator -----------------------------------------------------------------------------
class LinearObservation(AbstractObservation):
    """Any linear operator: ``H`` ``(p, n)`` applied to the flattened state ``(..., n)``.

    Args:
        matrix: ``H`` ``(p, n)``.
        std: Noise std: a number or ``(p,)`` values.
        event_shape: Shape of one state, ``prod(event_shape) = n`` (default ``(n,)``: a vector state).
        locations: Physical positions ``(p, d)`` of the observations, for localised filters.
    """

    registry_name: ClassVar[str | None] = "linear"

    def __init__(self, matrix: Tensor | Sequence[Sequence[float]], std: float | Tensor | Sequence[float] = 1.0,
                 event_shape: Sequence[int] | None = None,
                 locations: Tensor | Sequence[Sequence[float]] | None = None) -> None:
        super().__init__(std)
        h = torch.as_tensor(matrix, dtype=torch.float64) if not isinstance(matrix, Tensor) else matrix.double()
        if h.dim() != 2 or h.numel() == 0:
            raise ShapeError(format_error("matrix", "a 2-D tensor H (p, n)", f"shape {tuple(h.shape)}"))
        if not bool(torch.isfinite(h).all()):
            raise NonFiniteError(format_error("matrix", "finite entries", "NaN or inf entries"))
        ev = (h.shape[1],) if event_shape is None else tuple(int(s) for s in event_shape)
        if math.prod(ev) != h.shape[1]:
            raise ShapeError(format_error("event_shape", f"a shape with {h.shape[1]} entries (H's columns)", repr(ev)))
        loc = None
        if locations is not None:
            loc = torch.as_tensor(locations, dtype=torch.float64) if not isinstance(locations, Tensor) \
                else locations.double()
            if loc.dim() == 1:
                loc = loc[:, None]
            if loc.dim() != 2 or loc.shape[0] != h.shape[0]:
                raise ShapeError(format_error("locations", f"a tensor ({h.shape[0]}, d), one position per row of H",
                                              f"shape {tuple(loc.shape)}"))
            loc = torch.remainder(loc, 1.0)
        self.H, self.event, self._loc = h.detach().cpu(), ev, loc
        self.spatial_dims = len(ev) - 1

    def event_shape_of(self, state: Tensor, name: str = "state") -> tuple[int, ...]:
        k = len(self.event)
        if not isinstance(state, Tensor) or state.dim() < k or tuple(state.shape[-k:]) != self.event:
            got = f"shape {tuple(state.shape)}" if isinstance(state, Tensor) else type(state).__name__
            raise ShapeError(format_error(name, f"a tensor (..., {', '.join(map(str, self.event))}) (the operator's "
                                                "event_shape)", got))
        return self.event

    def n_obs(self, event_shape: Sequence[int]) -> int:
        if tuple(int(s) for s in event_shape) != self.event:
            raise ShapeError(format_error("state", f"event shape {self.event} (the operator's)", repr(tuple(event_shape))))
        return int(self.H.shape[0])

    def locations(self, event_shape: Sequence[int]) -> Tensor | None:
        return self._loc

    def matrix(self, event_shape: Sequence[int]) -> Tensor:
        self.n_obs(event_shape)
        return self.H.clone()

    def apply(self, state: Tensor) -> Tensor:
        ev = self.event_shape_of(state)
        flat = state.reshape(*state.shape[:state.dim() - len(ev)], -1)
        return flat @ self.H.to(device=state.device, dtype=state.dtype).T


def sample_observations(truth: Tensor, op: AbstractObservation, generator: torch.Generator | None = None) -> Tensor:
    """Noisy observations ``H(truth) + eps`` of a truth ``(..., C, *grid)``, ``(..., p)``.

    Args:
        truth: True state(s).
        op: The observation operator (its ``std`` sets ``R``).
        generator: Source of the noise.
    """
    if not isinstance(op, AbstractObservation):
        raise ConfigError(format_error("op", "an observation operator (AbstractObservation)", type(op).__name__))
    return op.sample(truth, generator)


OBSERVATIONS: dict[str, type[AbstractObservation]] = {
    "points": PointObservation, "grid": GridObservation, "field": FullFieldObservation, "linear": LinearObservation,
}
"""Observation operators by name (the ``type`` of a spec)."""


def observation_from_spec(spec: AbstractObservation | dict[str, Any]) -> AbstractObservation:
    """An operator from ``{"type": name, **kwargs}`` (names of :data:`OBSERVATIONS`), or as given."""
    if isinstance(spec, AbstractObservation):
        return spec
    if not isinstance(spec, dict) or spec.get("type") not in OBSERVATIONS:
        got = repr(spec.get("type")) if isinstance(spec, dict) else type(spec).__name__
        raise ConfigError(format_error("observation", f"an operator or a spec with type in {sorted(OBSERVATIONS)}", got))
    cls = OBSERVATIONS[spec["type"]]
    kwargs = {k: from_jsonable(v) for k, v in spec.items() if k != "type"}
    check_config_keys(cls, kwargs, "observation")
    return cls(**kwargs)
