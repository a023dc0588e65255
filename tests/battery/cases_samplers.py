"""Rows of the bad-input battery for samplers: options, grids, starting points and non-finite solves."""

from __future__ import annotations

from typing import Any

import torch

import stochclosure as sc
from stochclosure import errors as E

from .base import BadInput, Context

C = BadInput
NAN, INF = float("nan"), float("inf")


def _sampler(**spec: Any) -> Any:
    return sc.resolve("sampler", spec)


def _nan_score_solve(ctx: Context) -> Any:
    """A score that turns NaN for batch member 1 below t = 0.5, through the shared driver."""
    sde = sc.resolve("sde", "vp")

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = -x
        s[1] = torch.where(t[1] < 0.5, NAN, 1.0) * s[1]
        return s

    return _sampler(type="euler_maruyama", steps=10).sample(score, sde, (3, 4), generator=torch.Generator().manual_seed(0))


def _nan_x_init(ctx: Context) -> Any:
    x = torch.randn(2, 1, 16, 16)
    x[1, 0, 3, 3] = INF
    return ctx.model.sample(ctx.cond(), x_init=x)


CASES: list[BadInput] = [
    C("sampler_rho_nan", "sampler constructor", "rho=nan", E.ConfigError, "rho",
      lambda c: _sampler(type="edm_heun", rho=NAN)),
    C("sampler_rho_zero", "sampler constructor", "rho=0", E.ConfigError, "rho",
      lambda c: _sampler(type="euler_maruyama", grid="karras", rho=0.0)),
    C("sampler_data_std_nan", "sampler constructor", "data_std=nan", E.ConfigError, "data_std",
      lambda c: _sampler(type="truncated_karras_em", data_std=NAN)),
    C("sampler_data_std_negative", "sampler constructor", "data_std=-1", E.ConfigError, "data_std",
      lambda c: _sampler(type="dpm_solver_pp_2m", data_std=-1.0)),
    C("sampler_t_start_nan", "sampler constructor", "t_start=nan", E.ConfigError, "t_start",
      lambda c: _sampler(type="euler_maruyama", t_start=NAN)),
    C("sampler_t_start_beyond_T", "GridSampler.sample", "t_start=2 for an SDE with T=1", E.ConfigError, "t_start",
      lambda c: _sampler(type="euler_maruyama", steps=2, t_start=2.0).sample(
          lambda x, t: -x, sc.resolve("sde", "vp"), (2, 2))),
    C("sampler_steps_zero", "sampler constructor", "steps=0", E.ConfigError, "steps",
      lambda c: _sampler(type="probability_flow_heun", steps=0)),
    C("sampler_grid_bare_list", "sampler constructor", "grid=[1.0, 0.5] (times or sigmas?)", E.ConfigError, "grid",
      lambda c: _sampler(type="edm_heun", grid=[1.0, 0.5])),
    C("sampler_grid_increasing", "sampler constructor", "grid={'sigmas': [1, 2, 0]} (not decreasing)",
      E.ConfigError, "grid.sigmas", lambda c: _sampler(type="edm_heun", grid={"sigmas": [1.0, 2.0, 0.0]})),
    C("sampler_grid_steps_mismatch", "sampler constructor", "steps=5 with a 3-step explicit grid", E.ConfigError,
      "steps", lambda c: _sampler(type="euler_maruyama", steps=5, grid={"times": [1.0, 0.5, 0.1, 0.01]})),
    C("sampler_sigma_above_sde", "GridSampler.sample", "sigmas starting above the VP SDE's sigma(T)",
      E.ConfigError, "grid.sigmas", lambda c: _sampler(type="edm_heun", grid={"sigmas": [1e3, 1.0, 0.0]}).sample(
          lambda x, t: -x, sc.resolve("sde", "vp"), (2, 2))),
    C("sampler_x_init_inf", "ClosureModel.sample", "an inf in x_init", E.NonFiniteError, "x_init", _nan_x_init),
    C("sampler_x_init_int", "GridSampler.sample", "an int64 x_init", E.DTypeError, "x_init",
      lambda c: _sampler(type="euler_maruyama", steps=2).sample(
          lambda x, t: -x, sc.resolve("sde", "vp"), (2, 2), x_init=torch.zeros(2, 2, dtype=torch.long))),
    C("sampler_score_nan_midway", "GridSampler.sample", "a score returning NaN for member 1 from t < 0.5",
      E.NonFiniteError, "members [1]", _nan_score_solve),
]
