"""Rows of the bad-input battery: the post-hoc spread factor of a Gaussian closure law."""

from __future__ import annotations

from typing import Any

from stochclosure import errors as E

from .base import BadInput

_BACKBONE = {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1, "embed_dim": 4, "encoder": "field"}


def _spread(factor: Any) -> Any:
    from stochclosure.closures.learned import GaussianClosure

    return GaussianClosure(_BACKBONE).set_spread(factor)


C = BadInput
CASES: list[BadInput] = [
    C("gaussian_spread_zero", "GaussianClosure.set_spread", "factor=0", E.ConfigError, "factor", lambda c: _spread(0.0)),
    C("gaussian_spread_negative", "GaussianClosure.set_spread", "factor=-1.2", E.ConfigError, "factor",
      lambda c: _spread(-1.2)),
    C("gaussian_spread_nan", "GaussianClosure.set_spread", "factor=nan", E.ConfigError, "factor",
      lambda c: _spread(float("nan"))),
    C("gaussian_spread_string", "GaussianClosure.set_spread", "factor='1.1'", E.ConfigError, "factor",
      lambda c: _spread("1.1")),
]
