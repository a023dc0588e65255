"""The score-operator interface: ``forward(x, t, cond) -> score``, same shape as ``x``."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._types import Conditioning, ScoreFn, check_tensor
from ..config import Configurable
from ..errors import ShapeError, format_error

__all__ = ["AbstractScoreOperator", "bind_score"]


class AbstractScoreOperator(Configurable, nn.Module, metaclass=abc.ABCMeta):
    """Approximates ``grad_x log p_t(x | cond)`` of the noised conditional law.

    Capabilities (class attributes):
        spatial_dims: Spatial ranks supported (0 = vector events ``(batch, dim)``, 1 = rings,
            2 = tori).
        resolution_invariant: The same weights work on any grid size.
        conditional: Uses ``cond`` (an unconditional operator ignores it).

    Implementations put normalisation / preconditioning behind this boundary so that
    samplers only ever see a score.
    """

    component_kind: ClassVar[str] = "score_operator"
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    resolution_invariant: ClassVar[bool] = False
    conditional: ClassVar[bool] = True

    def __init__(self) -> None:
        nn.Module.__init__(self)

    def supported_spatial_dims(self) -> tuple[int, ...]:
        """Spatial ranks this *instance* accepts (default: the class's ``spatial_dims``).

        Override when the rank is fixed at construction (e.g. a network built for rings only);
        :func:`bind_score` refuses other events before the network runs.
        """
        return tuple(type(self).spatial_dims)

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        """Evaluate the score.

        Args:
            x: ``(batch, channels, *spatial)`` noisy sample (or ``(batch, dim)``).
            t: ``(batch,)`` diffusion times.
            cond: Conditioning with batch size ``batch`` (or 1), or ``None``.

        Returns:
            Tensor shaped like ``x``.
        """

    # -- contract-suite hooks -------------------------------------------------------------------
    @classmethod
    def example(cls) -> AbstractScoreOperator:
        """A small instance for contract tests and docs (default: ``cls()``)."""
        return cls()

    def example_inputs(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Conditioning | None]:
        """Valid ``(x, t, cond)`` for this operator with ``batch`` members (contract suite)."""
        raise NotImplementedError(f"{type(self).__name__} does not define example_inputs()")


def _check_spatial_rank(op: Any, event_shape: tuple[int, ...]) -> None:
    """Refuse an event whose spatial rank the operator does not declare (before any network runs)."""
    declared = op.supported_spatial_dims() if hasattr(op, "supported_spatial_dims") else getattr(op, "spatial_dims", None)
    if declared is None:
        return
    rank = len(event_shape) - 1
    if rank not in tuple(declared):
        kinds = {0: "vector events (C,)", 1: "rings (C, n)", 2: "tori (C, n, n)"}
        raise ShapeError(format_error(
            "event_shape", f"spatial rank in {tuple(declared)} ({', '.join(kinds.get(d, str(d)) for d in declared)}), "
            f"as {type(op).__name__} declares", f"event shape {event_shape} (spatial rank {rank})",
            "give the closure a grid of the operator's rank, or build the operator for this rank "
            f"(e.g. spatial_dims={rank})"))


def bind_score(
    op: nn.Module,
    cond: Conditioning | None,
    *,
    event_shape: tuple[int, ...] | None = None,
    batch: int | None = None,
    t_probe: float | None = None,
    validate: bool = True,
    probe: bool = True,
) -> ScoreFn:
    """Bind a condition to a score operator, validating once, and return ``score_fn(x, t)``.

    The condition is checked (finite values, batch, grid) and the operator is probed with one
    small call so that mistakes surface here, with a clear message, and not inside a sampler
    loop. The returned function then calls ``op`` directly without further checks.

    Args:
        op: A score operator (``forward(x, t, cond)``).
        cond: The condition, batch size ``batch`` or 1.
        event_shape: Event shape of ``x`` (``(channels, *spatial)``); enables the probe.
        batch: Batch size the sampler will use.
        t_probe: Diffusion time used by the probe.
        validate: Check the condition (and probe the operator, see ``probe``).
        probe: Call the operator once on a small input (skipped when the caller already did).

    Returns:
        ``score_fn(x, t) -> Tensor`` with the condition bound.

    Raises:
        ShapeError, NonFiniteError: for a bad condition or an operator returning a wrong shape.
    """
    if event_shape is not None:
        _check_spatial_rank(op, tuple(event_shape))
    if validate and cond is not None:
        spatial = tuple(event_shape[1:]) if event_shape is not None and len(event_shape) > 1 else None
        cond.validate(batch=batch, spatial=spatial)
    if cond is not None and batch is not None and cond.batch_size not in (None, batch):
        cond = cond.expand_batch(batch)
    if validate and probe and event_shape is not None:
        probe_cond = cond.index(slice(0, 1)) if cond is not None and cond.batch_size else cond
        x = torch.zeros((1, *event_shape))
        for p in op.parameters() if isinstance(op, nn.Module) else ():
            x = x.to(device=p.device, dtype=p.dtype)
            break
        t = torch.full((1,), 0.5 if t_probe is None else t_probe, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            out = op(x, t, probe_cond)
        check_tensor("score(x, t, cond)", out, finite=True)
        if tuple(out.shape) != tuple(x.shape):
            raise ShapeError(format_error("score operator output", f"shape {tuple(x.shape)} like x",
                                          f"shape {tuple(out.shape)}", "the score must have the shape of x"))

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        return op(x, t, cond)

    return score_fn
