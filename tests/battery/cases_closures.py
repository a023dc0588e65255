"""Rows of the bad-input battery: closure laws (physics closures, noise laws, residual laws)."""

from __future__ import annotations

from typing import Any

import torch

from stochclosure import errors as E
from stochclosure._types import Conditioning

from .base import BadInput, Context


def _law(spec: Any) -> Any:
    from stochclosure.registry import resolve

    return resolve("closure", spec)


def _w(*shape: int, dtype: torch.dtype = torch.float32) -> Conditioning:
    return Conditioning(fields=torch.zeros(shape, dtype=dtype))


def _fit_noise(ctx: Context, law: str, samples: torch.Tensor) -> Any:
    return _law(law).fit(samples)


C = BadInput
CASES: list[BadInput] = [
    C("adm_negative_order", "closure adm", "order=-1", E.ConfigError, "order",
      lambda c: _law({"type": "adm", "order": -1})),
    C("adm_pad_aliasing", "closure adm", "pad=1.2 (products alias into resolved modes)", E.ConfigError, "pad",
      lambda c: _law({"type": "adm", "pad": 1.2})),
    C("gradient_negative_width", "closure gradient", "filter_width=-0.1", E.ConfigError, "filter_width",
      lambda c: _law({"type": "gradient", "filter_width": -0.1})),
    C("physics_unknown_filter", "closure smagorinsky", "filter='box'", E.ConfigError, "filter",
      lambda c: _law({"type": "smagorinsky", "filter": "box"})),
    C("smagorinsky_negative_cs", "closure smagorinsky", "cs=-0.1", E.ConfigError, "cs",
      lambda c: _law({"type": "smagorinsky", "cs": -0.1})),
    C("dynamic_test_ratio", "closure dynamic_smagorinsky", "test_ratio=1 (test filter no wider)", E.ConfigError,
      "test_ratio", lambda c: _law({"type": "dynamic_smagorinsky", "test_ratio": 1.0})),
    C("bardina_sharp_filter", "closure bardina", "filter='spectral' (identity on resolved modes)", E.ConfigError,
      "filter", lambda c: _law({"type": "bardina", "filter": "spectral"})),
    C("physics_two_channels", "PhysicsClosure.sample", "cond.fields with 2 channels", E.ShapeError, "cond.fields",
      lambda c: _law("adm").sample(_w(2, 2, 16, 16))),
    C("physics_odd_grid", "PhysicsClosure.sample", "a 15^2 grid", E.ShapeError, "cond.fields",
      lambda c: _law("gradient").sample(_w(2, 1, 15, 15))),
    C("physics_no_fields", "PhysicsClosure.mean", "a condition without fields", E.ShapeError, "cond.fields",
      lambda c: _law("bardina").mean(Conditioning(features=torch.zeros(2, 3)))),
    C("physics_nan_fields", "PhysicsClosure.mean", "a NaN pixel in cond.fields", E.NonFiniteError, "cond.fields",
      lambda c: _law("adm").mean(Conditioning(fields=torch.zeros(2, 1, 16, 16).index_fill(-1, torch.tensor([3]),
                                                                                           float("nan"))))),
    C("physics_int_fields", "PhysicsClosure.mean", "int64 cond.fields", E.DTypeError, "cond.fields",
      lambda c: _law("smagorinsky").mean(_w(2, 1, 16, 16, dtype=torch.long))),
    C("physics_other_grid", "PhysicsClosure.sample", "grid=(8, 8) for a 16^2 condition", E.ShapeError, "grid",
      lambda c: _law("adm").sample(_w(2, 1, 16, 16), grid=(8, 8))),
    C("physics_latent", "PhysicsClosure.draw", "a latent for a Dirac law", E.ShapeError, "latent",
      lambda c: _law("adm").draw(_w(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))),
    C("white_negative_sigma", "closure white", "sigma=-1", E.ConfigError, "sigma",
      lambda c: _law({"type": "white", "sigma": -1.0})),
    C("white_latent_shape", "WhiteNoise.draw", "a latent of the wrong grid", E.ShapeError, "latent",
      lambda c: _law("white").draw(_w(2, 1, 16, 16), torch.zeros(2, 1, 8, 8))),
    C("coloured_unfitted", "ColouredNoise.sample", "no fitted spectrum", E.ConfigError, "spectrum",
      lambda c: _law("coloured").sample(_w(2, 1, 16, 16))),
    C("coloured_fit_nan", "ColouredNoise.fit", "a NaN in the residual samples", E.NonFiniteError, "residual_samples",
      lambda c: _fit_noise(c, "coloured", torch.full((4, 1, 16, 16), float("nan")))),
    C("noise_fit_channels", "WhiteNoise.fit", "2-channel samples for a 1-channel law", E.ShapeError,
      "residual_samples", lambda c: _fit_noise(c, "white", torch.zeros(4, 2, 16, 16))),
    C("ar1_short_series", "fit_ar1", "a series of 2 times", E.ShapeError, "series",
      lambda c: __import__("stochclosure.closures", fromlist=["fit_ar1"]).fit_ar1(torch.zeros(2, 5))),
    C("residual_channels", "closure residual", "a 2-channel residual on a 1-channel physics closure", E.ConfigError,
      "residual", lambda c: _law({"type": "residual", "physics": "adm",
                                  "residual": {"type": "white", "sigma": [1.0, 1.0], "channels": 2}})),
    C("physics_plus_noise_kind", "closure physics_plus_noise", "noise='pink'", E.ConfigError, "noise",
      lambda c: _law({"type": "physics_plus_noise", "noise": "pink"})),
    C("physics_plus_noise_fit_shape", "PhysicsPlusNoise.fit", "closures of another grid than the conditions",
      E.ShapeError, "'u'", lambda c: _law("physics_plus_noise").fit(_w(2, 1, 16, 16), torch.zeros(2, 1, 8, 8))),
    C("unknown_closure", "closure registry", "type='admm'", E.UnknownPluginError, "admm",
      lambda c: _law({"type": "admm"})),
]
