"""Shape conventions, the :class:`Conditioning` dataclass and input checks.

Conventions (also in the README, written once here):

* A **field** is a tensor ``(batch, channels, *spatial)`` on a periodic grid. ``spatial`` is
  ``(n,)`` on a 1-D ring and ``(n, n)`` (or ``(ny, nx)``) on a 2-D torus. Grid point ``i`` sits
  at physical coordinate ``i / n`` of the unit period, so the end point is never duplicated.
* A **vector** event (non-field problems, tests) is ``(batch, dim)``.
* **Diffusion time** ``t`` is a tensor of shape ``(batch,)`` in ``[sde.eps, sde.T]``; noising
  runs forward in ``t``. Physical (PDE) time is a different thing, called ``step`` / ``dt``.
* **Sparse measurements** are values ``(batch, channels, n_points)`` at physical points
  ``(n_points, d)`` in ``[0, 1)^d``, shared by the batch.
* A **score function**, as samplers see it, is ``score_fn(x, t) -> Tensor`` with the
  condition already bound; samplers never see networks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, DeviceError, DTypeError, NonFiniteError, ShapeError, format_error

__all__ = [
    "Conditioning",
    "ScoreFn",
    "check_tensor",
    "check_finite",
    "check_time",
    "check_generator",
    "check_condition_dtype",
    "describe",
    "channels_last_hint",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x, t) -> score``: x ``(batch, *event)``, t ``(batch,)``, score like x."""

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CONDITION_DTYPES = (torch.float32, torch.float64)


def describe(x: Any) -> str:
    """Short human description of a value for error messages (shape, dtype, device)."""
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return f"{type(x).__name__} {x!r}"[:200]


def channels_last_hint(shape: Sequence[int], channels: int | None = None) -> str | None:
    """A fix hint when ``shape`` looks like a channels-last field ``(batch, *spatial, C)``.

    The library's fields are channels-first ``(batch, C, *spatial)``. A shape whose last axis is
    small (at most 4, or equal to ``channels``) while axis 1 is a larger grid size is taken for an
    image-style layout.

    Returns:
        The hint (``"... x.movedim(-1, 1) ..."``) or ``None`` when the layout looks right.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        return None
    last, second = shape[-1], shape[1]
    small = last == channels if channels is not None else last <= 4
    if small and second >= 8 and last < second and (channels is None or second != channels):
        want = (shape[0], last, *shape[1:-1])
        return (f"this looks channels-last (batch, *spatial, C); stochclosure wants channels-first (batch, C, "
                f"*spatial): use x.movedim(-1, 1) to get shape {want}")
    return None


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise :class:`NonFiniteError` if ``x`` holds a NaN or infinite value.

    A single NaN pixel would be spread over the whole sample by the first FFT of a spectral
    network, so inputs are checked before any network sees them.

    Args:
        name: Argument name for the message.
        x: Any tensor.

    Returns:
        ``x`` unchanged.
    """
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(bad.sum()) - n_nan
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise NonFiniteError(
                format_error(
                    name,
                    "finite values",
                    f"{n_nan} NaN and {n_inf} inf of {x.numel()} values (first at index {first})",
                    "clean or mask the input before calling; spectral layers spread a single "
                    "NaN over the whole sample",
                )
            )
    return x


def check_tensor(
    name: str,
    x: Any,
    *,
    rank: int | Sequence[int] | None = None,
    min_rank: int | None = None,
    batch: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | None = None,
    floating: bool = True,
    device: torch.device | None = None,
    finite: bool = True,
) -> Tensor:
    """Validate a tensor argument and raise a typed, explanatory error on mismatch.

    Args:
        name: Argument name used in the message.
        x: The value to check.
        rank: Allowed number of dimensions (int or several).
        min_rank: Minimum number of dimensions.
        batch: Required size of dimension 0.
        shape: Required shape; ``None`` entries are wildcards.
        dtype: Required dtype.
        floating: Require a floating dtype.
        device: Required device.
        finite: Reject NaN / inf values.

    Returns:
        ``x`` unchanged.

    Raises:
        ShapeError, DTypeError, DeviceError, NonFiniteError: on the first violation found.
    """
    if not isinstance(x, Tensor):
        raise DTypeError(format_error(name, "a torch.Tensor", describe(x), "wrap it with torch.as_tensor"))
    if rank is not None:
        ranks = (rank,) if isinstance(rank, int) else tuple(rank)
        if x.dim() not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ShapeError(
                format_error(
                    name,
                    f"{want} dimensions (batch, channels, *spatial)",
                    f"{x.dim()} dimensions with shape {tuple(x.shape)}",
                    "add the missing batch/channel axis with x[None] or x.unsqueeze(1)",
                )
            )
    if min_rank is not None and x.dim() < min_rank:
        raise ShapeError(format_error(name, f"at least {min_rank} dimensions", f"shape {tuple(x.shape)}"))
    if batch is not None and (x.dim() == 0 or x.shape[0] != batch):
        got = x.shape[0] if x.dim() else "a scalar"
        raise ShapeError(
            format_error(name, f"batch size {batch}", f"batch size {got} (shape {tuple(x.shape)})",
                         "pass one entry per batch member, or expand with .expand/.repeat")
        )
    if shape is not None:
        ok = x.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ShapeError(format_error(name, f"shape {want}", f"shape {tuple(x.shape)}"))
    if floating and not x.is_floating_point():
        raise DTypeError(format_error(name, "a floating dtype", str(x.dtype), "convert with x.float() or x.double()"))
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(format_error(name, f"dtype {dtype}", str(x.dtype), f"convert with x.to({dtype})"))
    if device is not None and x.device != torch.device(device):
        raise DeviceError(format_error(name, f"device {device}", str(x.device), f"move it with x.to('{device}')"))
    if finite:
        check_finite(name, x)
    return x


def check_time(name: str, t: Any, batch: int, t_min: float, t_max: float) -> Tensor:
    """Validate diffusion times ``t`` of shape ``(batch,)`` inside ``[t_min, t_max]``."""
    t = check_tensor(name, t, rank=1, batch=batch)
    lo, hi = float(t.min()), float(t.max())
    tol = 1e-6 * max(1.0, abs(t_max))
    if lo < -tol or hi > t_max + tol:
        raise ShapeError(
            format_error(name, f"diffusion times in [{t_min:g}, {t_max:g}]", f"values in [{lo:g}, {hi:g}]",
                         "diffusion time is not the physical time; use the SDE's eps..T range")
        )
    return t


def check_generator(value: Any, argument: str = "generator") -> torch.Generator | None:
    """Check a ``generator=`` argument: ``None`` or a :class:`torch.Generator`.

    A seed (``generator=0``) or a NumPy generator would otherwise fail deep inside
    :func:`torch.randn` with a message about argument combinations.

    Args:
        value: The generator as given.
        argument: Its name for the message.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: anything else; the fix shows how to build a seeded torch generator.

    Example:
        >>> check_generator(None) is None
        True
    """
    if value is None or isinstance(value, torch.Generator):
        return value
    fix = "pass torch.Generator().manual_seed(SEED) (or None for torch's global generator)"
    if isinstance(value, int) and not isinstance(value, bool):
        fix = f"pass torch.Generator().manual_seed({value}) instead of the bare seed"
    raise ConfigError(format_error(argument, "None or a torch.Generator", f"{type(value).__module__}."
                                   f"{type(value).__name__} {value!r}"[:200], fix))


def check_condition_dtype(cond: Conditioning) -> Conditioning:
    """Refuse float16 / bfloat16 condition tensors, naming the first one found.

    Conditions are float32 or float64: the encoders resample fields with FFTs (no half-precision
    FFT on CPU, and only power-of-two sizes on GPU) and interpolate measurements in the model's
    float32 arithmetic, so a half-precision condition either fails deep inside torch or is
    silently rounded to about three significant digits before it reaches the network.

    Args:
        cond: The condition.

    Returns:
        ``cond`` unchanged.

    Raises:
        DTypeError: a tensor of ``cond`` in float16 or bfloat16; the fix casts the condition.
    """
    for f in dataclasses.fields(cond):
        v = getattr(cond, f.name)
        if isinstance(v, Tensor) and v.is_floating_point() and v.dtype not in _CONDITION_DTYPES:
            raise DTypeError(format_error(f"cond.{f.name}", "float32 or float64 (half precision is not supported "
                                          "in conditions)", str(v.dtype), "cast the condition with "
                                          "cond.to(torch.float32)"))
    return cond


def _map_tensors(obj: Conditioning, fn: Callable[[str, Tensor], Tensor | None]) -> Conditioning:
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor):
            changes[f.name] = fn(f.name, v)
    return dataclasses.replace(obj, **changes)


@dataclass(frozen=True)
class Conditioning:
    """What the closure is conditioned on, passed explicitly on every call.

    All batched members share the leading ``batch`` dimension; ``obs_points`` is shared.

    Attributes:
        fields: Coarse fields on the grid, ``(batch, c_f, *spatial)`` (e.g. current vorticity).
        history: Earlier states, ``(batch, k, c_f, *spatial)``, oldest first.
        obs_values: Sparse measurements, ``(batch, c_o, n_points)``.
        obs_points: Physical coordinates of the measurements, ``(n_points, d)`` in ``[0, 1)^d``.
        features: Non-field conditioning vectors, ``(batch, n_features)``.
    """

    fields: Tensor | None = None
    history: Tensor | None = None
    obs_values: Tensor | None = None
    obs_points: Tensor | None = None
    features: Tensor | None = None

    _BATCHED = ("fields", "history", "obs_values", "features")

    @property
    def batch_size(self) -> int | None:
        """The common batch size, or ``None`` when nothing batched is set."""
        for name in self._BATCHED:
            v = getattr(self, name)
            if v is not None:
                return int(v.shape[0])
        return None

    @property
    def spatial_shape(self) -> tuple[int, ...] | None:
        """Spatial shape of ``fields`` (or ``history``), ``None`` if neither is set."""
        if self.fields is not None:
            return tuple(self.fields.shape[2:])
        if self.history is not None:
            return tuple(self.history.shape[3:])
        return None

    def validate(self, batch: int | None = None, spatial: tuple[int, ...] | None = None) -> Conditioning:
        """Check ranks, batch agreement, finiteness and point coordinates.

        Args:
            batch: Required batch size (1 is also accepted and means "broadcast").
            spatial: Required spatial shape of ``fields`` / ``history``.

        Returns:
            ``self``.

        Raises:
            ShapeError, NonFiniteError, DTypeError: naming the offending attribute (float16 and
                bfloat16 tensors are refused, see :func:`check_condition_dtype`).
        """
        sizes = {}
        dtypes, devices = {}, {}
        for name in (*self._BATCHED, "obs_points"):
            v = getattr(self, name)
            if v is None:
                continue
            check_tensor(f"cond.{name}", v, min_rank=2, finite=False)
            dtypes[name], devices[name] = v.dtype, v.device
            if name != "obs_points":
                sizes[name] = int(v.shape[0])
                if v.shape[0] == 0:
                    raise ShapeError(format_error(f"cond.{name}", "at least one batch member", f"shape {tuple(v.shape)}",
                                                  "an empty batch has nothing to condition on"))
        if len(set(devices.values())) > 1:
            raise DeviceError(format_error("cond", "every tensor on one device", f"devices {devices}",
                                           "move the condition with cond.to(device)"))
        check_condition_dtype(self)
        if len({d for k, d in dtypes.items() if k != "obs_points"}) > 1:
            raise DTypeError(format_error("cond", "one floating dtype for fields/history/obs_values/features",
                                          f"dtypes { {k: str(d) for k, d in dtypes.items() if k != 'obs_points'} }",
                                          "cast the condition with cond.to(torch.float32)"))
        for name in self._BATCHED:
            v = getattr(self, name)
            if v is not None:
                check_finite(f"cond.{name}", v)
        if self.fields is not None:
            hint = channels_last_hint(self.fields.shape)
            if hint:
                raise ShapeError(format_error("cond.fields", "a channels-first field (batch, C, *spatial)",
                                              f"shape {tuple(self.fields.shape)}", hint))
        if len(set(sizes.values())) > 1:
            raise ShapeError(format_error("cond", "one batch size across fields/history/obs_values/features",
                                          f"batch sizes {sizes}"))
        if self.fields is not None:
            check_tensor("cond.fields", self.fields, rank=(3, 4))
        if self.history is not None:
            check_tensor("cond.history", self.history, rank=(4, 5))
            if self.fields is not None and self.history.shape[2:] != self.fields.shape[1:]:
                raise ShapeError(format_error("cond.history", f"(batch, k, {tuple(self.fields.shape[1:])})",
                                              f"shape {tuple(self.history.shape)}"))
        if (self.obs_values is None) != (self.obs_points is None):
            raise ShapeError(format_error("cond.obs_points", "obs_values and obs_points given together",
                                          "only one of them", "pass both or neither"))
        if self.obs_values is not None and self.obs_points is not None:
            check_tensor("cond.obs_values", self.obs_values, rank=3)
            check_tensor("cond.obs_points", self.obs_points, rank=2)
            if self.obs_points.shape[0] != self.obs_values.shape[-1]:
                raise ShapeError(format_error("cond.obs_points", f"{self.obs_values.shape[-1]} points (one per value)",
                                              f"{self.obs_points.shape[0]} points"))
            check_finite("cond.obs_points", self.obs_points)
            lo, hi = float(self.obs_points.min()), float(self.obs_points.max())
            if lo < 0.0 or hi >= 1.0:
                raise ShapeError(format_error("cond.obs_points", "physical coordinates in [0, 1)",
                                              f"values in [{lo:g}, {hi:g}]", "wrap them with points % 1.0"))
            uniq = torch.unique(self.obs_points.detach(), dim=0).shape[0]
            if uniq != self.obs_points.shape[0]:
                raise ShapeError(format_error("cond.obs_points", "distinct measurement points",
                                              f"{self.obs_points.shape[0] - uniq} duplicated of {self.obs_points.shape[0]}",
                                              "average the values measured at the same point and keep one copy"))
        if batch is not None and sizes and any(s not in (batch, 1) for s in sizes.values()):
            raise ShapeError(format_error("cond", f"batch size {batch} (or 1 to broadcast)", f"batch sizes {sizes}",
                                          "repeat the condition per member with cond.repeat_interleave(n)"))
        if spatial is not None:
            got = self.spatial_shape
            if got is not None and tuple(got) != tuple(spatial):
                raise ShapeError(format_error("cond.fields", f"spatial shape {tuple(spatial)} (the state's grid)",
                                              f"spatial shape {tuple(got)}", "resample the condition to the state's grid"))
        return self

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        """Move / cast every tensor, like :meth:`torch.Tensor.to`."""
        return _map_tensors(self, lambda _, v: v.to(*args, **kwargs))

    def repeat_interleave(self, n: int) -> Conditioning:
        """Repeat each batch member ``n`` times (member-major), for ensembles."""
        return _map_tensors(self, lambda k, v: v if k == "obs_points" else v.repeat_interleave(n, dim=0))

    def expand_batch(self, batch: int) -> Conditioning:
        """Broadcast a batch-1 condition to ``batch`` members (no copy)."""
        def fn(k: str, v: Tensor) -> Tensor:
            if k == "obs_points" or v.shape[0] == batch:
                return v
            return v.expand(batch, *v.shape[1:])
        return _map_tensors(self, fn)

    def index(self, idx: Any) -> Conditioning:
        """Select batch members (``idx`` is anything a tensor accepts on dim 0)."""
        return _map_tensors(self, lambda k, v: v if k == "obs_points" else v[idx])

    def reshape_batch(self, *batch_shape: int) -> Conditioning:
        """Reshape the leading batch dimension to ``batch_shape`` (e.g. for pyro plates)."""
        return _map_tensors(self, lambda k, v: v if k == "obs_points" else v.reshape(*batch_shape, *v.shape[1:]))

    def is_empty(self) -> bool:
        """True when no tensor is set (an unconditional model)."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))
