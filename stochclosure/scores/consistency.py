"""The score interface of a consistency-distilled student (:mod:`stochclosure.training.distill`).

A consistency model ``f(x_t, t)`` returns the end point ``x_0`` of the teacher's probability-flow
ODE through ``x_t``; exposed through the score interface as ``score = (alpha_t f - x) / sigma_t^2``,
Tweedie's formula returns ``f``, so the model is sampled and saved like any other closure model.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import Conditioning
from ..registry import resolve
from .base import AbstractScoreOperator

__all__ = ["ConsistencyScore"]


class ConsistencyScore(AbstractScoreOperator):
    """The score interface of a consistency-distilled student (registered as ``consistency``).

    ``forward`` is the backbone's score; the name marks the operator as distilled (its Tweedie
    denoiser ``(x + sigma_t^2 score) / alpha_t`` is the consistency function, not the posterior
    mean) and the configuration records how it was made.

    Args:
        backbone: The student network's score operator (name, spec or instance), usually the
            teacher's architecture so that it starts from the teacher's weights.
        teacher_sampler: Spec of the teacher ODE solver used for the targets (provenance).
        levels: Diffusion times the student was trained at (provenance; the consistency sampler
            should evaluate at these times).
    """

    conditional: ClassVar[bool] = True

    def __init__(self, backbone: Any, teacher_sampler: Any = None, levels: list[float] | None = None) -> None:
        super().__init__()
        self.backbone = resolve("score_operator", backbone)
        self.teacher_sampler = teacher_sampler
        self.levels = None if levels is None else [float(v) for v in levels]
        self.sde = getattr(self.backbone, "sde", None)
        self.spatial_dims = tuple(getattr(self.backbone, "spatial_dims", (2,)))  # type: ignore[misc]
        self.resolution_invariant = bool(getattr(self.backbone, "resolution_invariant", False))  # type: ignore[misc]

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        return self.backbone(x, t, cond)

    @classmethod
    def example(cls) -> ConsistencyScore:
        return cls({"type": "gaussian", "sde": "vp", "std": 1.0})

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        return self.backbone.example_inputs(batch, generator)
