"""Sparse measurements streamed into a rollout's condition, and the default condition."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._types import Conditioning, check_tensor
from ..errors import ShapeError, format_error

__all__ = ["Observation", "StreamedObservations", "default_condition", "regular_points"]


# -- sparse measurements --------------------------------------------------------------------------------
class Observation(NamedTuple):
    """Sparse measurements at one step: ``values (N, c_o, P)`` at ``points (P, d)`` in ``[0, 1)^d``."""

    values: Tensor
    points: Tensor


def regular_points(per_side: int, dims: int = 2) -> Tensor:
    """A regular lattice of ``per_side ** dims`` physical points ``(P, dims)`` at ``i / per_side``."""
    axes = [torch.arange(per_side, dtype=torch.float32) / per_side] * dims
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], -1)


class StreamedObservations:
    """Sparse measurements streamed step by step (e.g. from a reference run).

    Args:
        values: ``(n_steps, *obs_batch, c_o, P)``; ``obs_batch`` must broadcast against the
            rollout's batch (e.g. ``(cases,)`` or nothing).
        points: ``(P, d)`` physical coordinates in ``[0, 1)^d``.
    """

    def __init__(self, values: Tensor, points: Tensor) -> None:
        check_tensor("values", values, min_rank=3)
        check_tensor("points", points, rank=2)
        if points.shape[0] != values.shape[-1]:
            raise ShapeError(format_error("points", f"{values.shape[-1]} points (values' last axis)",
                                          f"{points.shape[0]} points"))
        self.values, self.points = values, points

    @classmethod
    def from_reference(cls, fields: Tensor, points: Tensor) -> StreamedObservations:
        """Sample reference fields ``(n_steps, *batch, C, *grid)`` at the grid points nearest ``points``."""
        d = points.shape[1]
        grid = fields.shape[-d:]
        idx = [torch.round(points[:, i] * grid[i]).long() % grid[i] for i in range(d)]
        vals = fields[(..., *idx)] if d > 1 else fields[..., idx[0]]
        return cls(vals, points)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def at(self, step: int, batch_shape: tuple[int, ...]) -> Observation:
        """The measurements of solver step ``step`` broadcast to ``batch_shape`` and flattened."""
        if step >= len(self):
            raise ShapeError(format_error("observations", f"measurements for step {step}",
                                          f"{len(self)} steps of measurements", "stream as many steps as the rollout"))
        v = self.values[step]
        try:
            target = torch.broadcast_shapes(tuple(v.shape), tuple(batch_shape) + tuple(v.shape[-2:]))
        except RuntimeError:
            target = None
        if target is None or math.prod(target[:-2]) != math.prod(batch_shape):
            raise ShapeError(format_error("observations", f"values per step broadcastable to the batch {tuple(batch_shape)}",
                                          f"per-step shape {tuple(v.shape)}"))
        v = torch.broadcast_to(v, target)
        return Observation(v.reshape(-1, *v.shape[-2:]), self.points)


def default_condition(state: Tensor, history: Tensor | None, obs: Observation | None) -> Conditioning:
    """The default condition: the current state as fields, plus history and sparse values if any.

    Args:
        state: ``(N, C, *spatial)``.
        history: ``(N, k, C, *spatial)`` oldest first, or ``None``.
        obs: Sparse measurements or ``None``.
    """
    return Conditioning(fields=state, history=history, obs_values=None if obs is None else obs.values,
                        obs_points=None if obs is None else obs.points)
