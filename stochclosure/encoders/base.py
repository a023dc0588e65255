"""The conditioning-encoder interface: raw observations -> channels on the sample's grid."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._types import Conditioning
from ..config import Configurable

__all__ = ["AbstractConditioningEncoder"]


class AbstractConditioningEncoder(Configurable, nn.Module, metaclass=abc.ABCMeta):
    """Turns a :class:`~stochclosure.Conditioning` into fields on a target grid.

    The target grid may differ from the grid of the observations (resolution transfer), so
    encoders work at *any* resolution, with periodic methods.

    Capabilities (class attributes):
        spatial_dims: Spatial ranks supported.
    """

    component_kind: ClassVar[str] = "encoder"
    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self) -> None:
        nn.Module.__init__(self)

    @property
    @abc.abstractmethod
    def out_channels(self) -> int:
        """Number of channels :meth:`forward` returns."""

    @abc.abstractmethod
    def forward(self, cond: Conditioning, grid: tuple[int, ...]) -> Tensor:
        """Encode ``cond`` on ``grid``.

        Args:
            cond: The condition (batch ``B``).
            grid: Target spatial shape, ``(n,)`` or ``(ny, nx)``.

        Returns:
            ``(B, out_channels, *grid)``.
        """

    @classmethod
    def example(cls) -> AbstractConditioningEncoder:
        """A small instance for contract tests and docs (default ``cls()``)."""
        return cls()

    def example_condition(self, batch: int, generator: torch.Generator | None = None) -> Conditioning:
        """A valid condition for the contract suite: one standard normal field of 16 points per side.

        ``fields`` is ``(batch, 1, 16, 16)`` when the encoder supports 2-D grids (``2`` in
        :attr:`spatial_dims`), else ``(batch, 1, 16)``. Override it for encoders that need other
        inputs (sparse points, more channels).

        Args:
            batch: Number of members ``B``.
            generator: Random generator.

        Returns:
            The condition.
        """
        rank = 2 if 2 in self.spatial_dims else min(self.spatial_dims)
        return Conditioning(fields=torch.randn(batch, 1, *(16,) * rank, generator=generator))
