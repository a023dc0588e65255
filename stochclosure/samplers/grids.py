"""Decreasing diffusion-time grids ``(steps + 1,)`` in float64, from ``t_start`` to ``t_end``.

A sampler's ``grid`` is one value: a name of :data:`GRIDS` (built between ``t_start`` and
``t_end`` with ``steps`` steps), or an explicit list of points, ``{"times": [...]}`` in diffusion
time or ``{"sigmas": [...]}`` in noise level ``sigma_t / alpha_t`` (the ``sigma`` of k-diffusion;
a trailing ``0`` is the final denoising step), parsed by :func:`parse_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, format_error
from ..sdes.base import AbstractSDE

__all__ = ["uniform", "karras", "karras_sigma", "log_snr", "make_grid", "GRIDS", "GridSpec", "ExplicitGrid",
           "parse_grid", "EXPLICIT_KINDS"]


def uniform(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Uniform in ``t``."""
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def _rho_ramp(a: float, b: float, steps: int, rho: float) -> Tensor:
    r = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return (a ** (1.0 / rho) + r * (b ** (1.0 / rho) - a ** (1.0 / rho))) ** rho


def karras(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """``t_i = (t_start^(1/rho) + i/n (t_end^(1/rho) - t_start^(1/rho)))^rho``: the research code's grid."""
    return _rho_ramp(t_start, t_end, steps, rho)


def karras_sigma(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) rho-spacing of the scaled noise level ``sigma_t / alpha_t``, mapped back to ``t``."""
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    s_hi, s_lo = torch.exp(-sde.log_snr(ends)).tolist()
    sig = _rho_ramp(s_hi, s_lo, steps, rho)
    ts = sde.t_from_log_snr(-torch.log(sig))
    ts[0], ts[-1] = t_start, t_end
    return ts


def log_snr(sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Uniform in ``lambda_t = log(alpha_t / sigma_t)`` (DPM-Solver's default)."""
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    lam = sde.log_snr(ends)
    ts = sde.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = t_start, t_end
    return ts


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform,
    "karras": karras,
    "karras_sigma": karras_sigma,
    "log_snr": log_snr,
}


def make_grid(name: str, sde: AbstractSDE, t_start: float, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """Build grid ``name`` (a key of :data:`GRIDS`)."""
    return GRIDS[name](sde, t_start, t_end, steps, rho)


# -- explicit grids ---------------------------------------------------------------------------------
EXPLICIT_KINDS = ("times", "sigmas")
"""Keys of an explicit grid: ``{"times": [...]}`` (diffusion times) or ``{"sigmas": [...]}`` (noise levels)."""

GridSpec = str | Mapping[str, Any]
"""A grid: a name of :data:`GRIDS`, or ``{"times": [...]}`` / ``{"sigmas": [...]}`` (see :func:`parse_grid`)."""

_GRID_FIX = ('a name of stochclosure.samplers.grids.GRIDS, {"times": [t_0 > t_1 > ...]} (diffusion times) or '
             '{"sigmas": [s_0 > s_1 > ..., 0]} (noise levels sigma_t / alpha_t, k-diffusion\'s sigmas)')


@dataclass(frozen=True)
class ExplicitGrid:
    """A grid given point by point instead of by name.

    Attributes:
        kind: ``"times"`` (diffusion times ``t``) or ``"sigmas"`` (noise levels ``sigma_t / alpha_t``,
            the ``sigma`` of k-diffusion and of diffusers' Karras-style schedulers).
        values: The strictly decreasing positive points, a trailing ``0`` removed.
        to_zero: The ``sigmas`` ended with ``0``: the last step jumps to noise level 0, which is
            Tweedie's denoising step (``E[x_0 | x_t]``, one evaluation), as in k-diffusion.
    """

    kind: str
    values: tuple[float, ...]
    to_zero: bool = False

    @property
    def steps(self) -> int:
        """Solver steps between the positive points (the final jump to 0 is the denoising step)."""
        return len(self.values) - 1

    def times(self, sde: AbstractSDE) -> Tensor:
        """The decreasing float64 diffusion times ``(steps + 1,)`` of the points under ``sde``.

        Raises:
            ConfigError: A point outside the SDE's range ``(0, T]`` (or above the noise level ``sigma(T)``).
        """
        vals = torch.tensor(self.values, dtype=torch.float64)
        if self.kind == "sigmas":
            s_max = float(torch.exp(-sde.log_snr(torch.tensor([float(sde.T)], dtype=torch.float64)))[0])
            if vals[0] > s_max * (1.0 + 1e-9):
                raise ConfigError(format_error("grid.sigmas", f"noise levels <= sigma(T) = {s_max:.6g} of {type(sde).__name__}",
                                               f"a first level of {float(vals[0]):.6g}",
                                               "start the schedule at the SDE's largest noise level (or use a VE SDE "
                                               "with a larger sigma_max)"))
            ts = sde.t_from_log_snr(-torch.log(vals)).clamp(max=float(sde.T))
            back = torch.exp(-sde.log_snr(ts))
            if not bool(((back - vals).abs() <= 1e-6 * vals).all()):
                raise ConfigError(format_error("grid.sigmas", f"noise levels that {type(sde).__name__} reaches in (0, T]",
                                               f"{self.values}", "drop the levels the SDE cannot represent"))
            return ts
        if not (vals[0] <= sde.T + 1e-12 and vals[-1] > 0):
            raise ConfigError(format_error("grid.times", f"times in (0, T={sde.T}]", f"{self.values}",
                                           "give diffusion times of this SDE"))
        return vals


def parse_grid(grid: Any) -> str | ExplicitGrid:
    """Check a grid value and return its name or its :class:`ExplicitGrid`.

    Args:
        grid: A name of :data:`GRIDS`, ``{"times": values}`` (strictly decreasing diffusion times
            ``> 0``) or ``{"sigmas": values}`` (strictly decreasing noise levels
            ``sigma_t / alpha_t > 0``, optionally ending with ``0``); values a list, tuple or
            1-D tensor with at least two positive points (one step).

    Returns:
        The name, or the parsed explicit grid.

    Raises:
        ConfigError: Anything else (a bare list is refused: say whether it holds times or sigmas).
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ConfigError(format_error("grid", f"one of {sorted(GRIDS)} or an explicit grid", repr(grid), _GRID_FIX))
        return grid
    if not isinstance(grid, Mapping) or len(grid) != 1 or next(iter(grid)) not in EXPLICIT_KINDS:
        got = f"{type(grid).__name__} {grid!r}"[:200]
        raise ConfigError(format_error("grid", "a grid name or a one-key mapping 'times' or 'sigmas'", got, _GRID_FIX))
    kind, raw = next(iter(grid.items()))
    try:
        vals = [float(v) for v in (raw.detach().cpu().reshape(-1).tolist() if isinstance(raw, Tensor) else raw)]
    except (TypeError, ValueError):
        raise ConfigError(format_error(f"grid.{kind}", "a list of numbers", repr(raw)[:200], _GRID_FIX)) from None
    to_zero = kind == "sigmas" and len(vals) > 0 and vals[-1] == 0.0
    pos = vals[:-1] if to_zero else vals
    ok = (len(pos) >= 2 and all(math.isfinite(v) and v > 0 for v in pos)
          and all(a > b for a, b in zip(pos, pos[1:])))
    if not ok:
        raise ConfigError(format_error(f"grid.{kind}", "at least two finite, strictly decreasing values > 0"
                                       + (" (then optionally 0)" if kind == "sigmas" else ""), repr(vals)[:200],
                                       _GRID_FIX))
    return ExplicitGrid(kind, tuple(pos), to_zero)
