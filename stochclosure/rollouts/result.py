"""``RolloutResult``: the named output of a rollout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError, format_error

__all__ = ["RolloutResult"]


@dataclass
class RolloutResult:
    """States of a (possibly ensemble) rollout, with their axes named.

    Attributes:
        states: ``(time, *batch, *event)`` recorded states; ``event`` is ``(channel, *spatial)``.
        times: ``(time,)`` physical times of the records.
        steps: ``(time,)`` solver step index of each record (0 is the initial state).
        step_seconds: ``(n_steps,)`` wall-clock seconds of each solver step (closure + solver).
        batch_dims: Names of the batch axes (plate names, e.g. ``("members",)``).
        event_dims: Names of the event axes (``("channel", "y", "x")`` or ``("channel", "x")``).
        member_dim: Name of the ensemble axis (a member of ``batch_dims``) or ``None``.
        closures: Closure terms drawn at each resampling step, ``{step: (*batch, *event)}``.
        trace: The pyro trace of the rollout's sites.
        nonfinite_step: With ``on_nonfinite="mark"``: the first step after which some member was
            non-finite (those members are frozen from there), else ``None``.
        finite_members: With ``on_nonfinite="mark"`` and some member frozen: ``(*batch)`` bool,
            ``True`` for members that stayed finite; ``None`` when all did.
    """

    states: Tensor
    times: Tensor
    steps: Tensor
    step_seconds: Tensor
    batch_dims: tuple[str, ...]
    event_dims: tuple[str, ...]
    member_dim: str | None = None
    closures: dict[int, Tensor] = field(default_factory=dict)
    trace: Any = None
    nonfinite_step: int | None = None
    finite_members: Tensor | None = None

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of all axes of :attr:`states`."""
        return ("time", *self.batch_dims, *self.event_dims)

    def axis(self, name: str) -> int:
        """Index of the axis ``name`` in :attr:`states`."""
        if name not in self.dims:
            raise ConfigError(format_error("name", f"one of the axes {self.dims}", repr(name)))
        return self.dims.index(name)

    def _member_axis(self) -> int:
        if self.member_dim is None:
            raise ShapeError(format_error("member_dim", "an ensemble axis", "None (a single trajectory)",
                                          "run with members=M or under a plate"))
        return self.axis(self.member_dim)

    @property
    def members(self) -> Tensor:
        """``(time, members, ...)``: the states with the ensemble axis second."""
        return self.states.movedim(self._member_axis(), 1)

    @property
    def n_members(self) -> int:
        """Ensemble size (1 without an ensemble axis)."""
        return 1 if self.member_dim is None else int(self.states.shape[self._member_axis()])

    @property
    def mean(self) -> Tensor:
        """Ensemble mean, :attr:`states` without the ensemble axis."""
        return self.states.mean(self._member_axis())

    @property
    def spread(self) -> Tensor:
        """Ensemble standard deviation (unbiased, ``M - 1``), without the ensemble axis."""
        return self.states.std(self._member_axis(), unbiased=True)

    @property
    def final(self) -> Tensor:
        """The last recorded state ``(*batch, *event)``."""
        return self.states[-1]

    @property
    def seconds(self) -> float:
        """Total wall-clock time of the solver steps."""
        return float(self.step_seconds.sum())

    def sites(self, prefix: str = "closure/") -> dict[str, Tensor]:
        """Values of the trace's sample sites whose names start with ``prefix``."""
        if self.trace is None:
            return {}
        return {k: v["value"] for k, v in self.trace.nodes.items()
                if v.get("type") == "sample" and k.startswith(prefix)}

    def to_numpy(self) -> dict[str, Any]:
        """Plain numpy arrays: ``states``, ``times``, ``steps``, ``step_seconds`` and ``dims``."""
        return {"states": self.states.detach().cpu().numpy(), "times": self.times.cpu().numpy(),
                "steps": self.steps.cpu().numpy(), "step_seconds": self.step_seconds.cpu().numpy(),
                "dims": self.dims}

    def to_xarray(self) -> Any:
        """An ``xarray.Dataset`` with named dims and coordinates (``time``; ``x``/``y`` at ``i / n``).

        Raises:
            ImportError: when xarray is not installed (``pip install stochclosure[xarray]``).
        """
        try:
            import xarray as xr
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("RolloutResult.to_xarray needs the optional dependency xarray; "
                              "fix: pip install 'stochclosure[xarray]' (or pip install xarray)") from e
        coords: dict[str, Any] = {"time": self.times.cpu().numpy(), "step": ("time", self.steps.cpu().numpy())}
        for name, size in zip(self.event_dims, self.states.shape[1 + len(self.batch_dims):]):
            if name in ("x", "y"):
                coords[name] = (torch.arange(size, dtype=torch.float64) / size).numpy()
        state = xr.DataArray(self.states.detach().cpu().numpy(), dims=self.dims, coords=coords, name="state")
        ds = xr.Dataset({"state": state})
        ds["step_seconds"] = xr.DataArray(self.step_seconds.cpu().numpy(), dims=("solver_step",))
        if self.member_dim is not None:
            ds["mean"] = state.mean(self.member_dim)
            ds["spread"] = state.std(self.member_dim, ddof=1)
        ds.attrs["member_dim"] = self.member_dim or ""
        return ds
