"""The system interface: a (coarse) solver a closure term plugs into."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from .._types import check_tensor
from ..config import Configurable
from ..errors import ShapeError, format_error

__all__ = ["AbstractSystem"]


class AbstractSystem(Configurable, abc.ABC):
    """A physical system advanced in physical time by a (reduced) solver.

    The reduced solver receives the closure term explicitly at every step:
    ``state_{n+1} = step(state_n, closure_term_n, dt)``. ``closure_term=None`` is the no-closure
    baseline. Physical time is ``dt`` / ``step``, unrelated to diffusion time.

    Capabilities (class attributes):
        spatial_dims: 1 (ring) or 2 (torus).
        stochastic: The full system has random forcing.

    Attributes:
        dt: Default physical time step.
        state_channels: Channels of the state field.
        closure_channels: Channels of the closure term.
    """

    component_kind: ClassVar[str] = "system"
    spatial_dims: ClassVar[int] = 2
    stochastic: ClassVar[bool] = False

    dt: float = 1e-3
    state_channels: int = 1
    closure_channels: int = 1

    @abc.abstractmethod
    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None) -> Tensor:
        """Advance the reduced model one step.

        Args:
            state: ``(batch, state_channels, *spatial)``.
            closure_term: ``(batch, closure_channels, *spatial)`` or ``None`` (no closure).
            dt: Physical time step (default ``self.dt``).

        Returns:
            The next state, like ``state``.
        """

    def check_state(self, state: Tensor) -> None:
        """Raise a typed error unless ``state`` is a batch of this system's states.

        Runs before any network sees the state (``rollout`` calls it on ``state0``). The default
        uses the system's own ``_check_state`` / ``_check_x`` where it has one, else checks the
        rank ``2 + spatial_dims`` and ``state_channels``.

        Args:
            state: ``(batch, state_channels, *spatial)``.

        Raises:
            ShapeError: a state of another rank, channel count or grid.
        """
        for own in ("_check_state", "_check_x"):
            fn = getattr(self, own, None)
            if callable(fn):
                fn(state)
                return
        check_tensor("state", state, rank=2 + int(self.spatial_dims), finite=False)
        if state.shape[1] != self.state_channels:
            raise ShapeError(format_error("state", f"(batch, {self.state_channels}, *spatial)",
                                          f"shape {tuple(state.shape)}"))

    @abc.abstractmethod
    def initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``batch`` initial states ``(batch, state_channels, *spatial)``."""

    @classmethod
    def example(cls) -> AbstractSystem:
        """A small instance for contract tests and docs (default ``cls()``)."""
        return cls()
