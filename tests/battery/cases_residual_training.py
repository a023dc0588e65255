"""Rows of the bad-input battery: training a residual law ``U = physics(y) + r`` by its remainder's loss."""

from __future__ import annotations

from typing import Any

import torch

from stochclosure import errors as E
from stochclosure._types import Conditioning

from .base import BadInput


def _residual(remainder: Any) -> Any:
    from stochclosure.closures import ResidualLaw

    return ResidualLaw({"type": "adm", "order": 2}, remainder)


def _gaussian() -> Any:
    return {"type": "gaussian", "backbone": {"type": "gaussian", "sde": "vp", "std": 1.0}}


def _cond() -> Conditioning:
    return Conditioning(fields=torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))


C = BadInput
CASES: list[BadInput] = [
    C("residual_loss_of_noise", "ResidualLaw.loss", "a white-noise remainder (fitted, not trained)", E.ConfigError,
      "residual", lambda c: _residual("white").loss(_cond(), torch.zeros(2, 1, 16, 16))),
    C("residual_loss_shape", "ResidualLaw.loss", "targets (2, 1, 8, 8) for a 16^2 condition", E.ShapeError, "u",
      lambda c: _residual(_gaussian()).loss(_cond(), torch.zeros(2, 1, 8, 8))),
    C("residual_loss_no_fields", "ResidualLaw.loss", "an empty condition", E.ShapeError, "cond",
      lambda c: _residual(_gaussian()).loss(Conditioning(), torch.zeros(2, 1, 16, 16))),
    C("residual_normalisation_of_noise", "ResidualLaw.fit_normalisation", "a white-noise remainder (no buffers)",
      E.ConfigError, "residual", lambda c: _residual("white").fit_normalisation(_cond(), torch.zeros(2, 1, 16, 16))),
]
