"""Rows of the bad-input battery: rollout guards, policies and closure laws in rollouts."""

from __future__ import annotations

import math

import torch

from stochclosure import errors as E

from .base import BadInput, Context

C = BadInput


def _linear() -> object:
    from stochclosure.systems import LinearRelaxation

    return LinearRelaxation(n=8)


def _run(closure: object = None, state0: torch.Tensor | None = None, n_steps: int = 2, system: object = None,
         **kw: object) -> object:
    from stochclosure.rollouts import rollout

    system = _linear() if system is None else system
    state0 = torch.randn(1, 8, 8) if state0 is None else state0
    return rollout(system, closure, state0, n_steps, **kw)


def _exploding(ctx: Context) -> object:
    return _run(lambda c: c.fields * 1e30, torch.full((1, 8, 8), 1e8), n_steps=6, members=2)


def _model(ctx: Context) -> object:
    return ctx.model


def _policy(name: str, **kw: object) -> object:
    from stochclosure import rollouts as r

    return getattr(r, name)(**kw)


CASES: list[BadInput] = [
    C("rollout_state_nan_midway", "rollout", "a state that overflows to inf/NaN after a few steps",
      E.NonFiniteError, "after step", lambda c: _run(None, torch.full((1, 8, 8), 3e38), n_steps=4, dt=1.0,
                                                     system=__import__("stochclosure.systems", fromlist=["x"])
                                                     .LinearRelaxation(n=8, gamma=-10.0))),
    C("rollout_negative_dt", "rollout", "dt=-0.01", E.ConfigError, "dt", lambda c: _run(dt=-0.01)),
    C("rollout_nan_dt", "rollout", "dt=nan", E.ConfigError, "dt", lambda c: _run(dt=math.nan)),
    C("rollout_negative_history", "rollout", "history=-1", E.ConfigError, "history", lambda c: _run(history=-1)),
    C("rollout_nan_init_perturbation", "rollout", "init_perturbation=nan", E.NonFiniteError, "init_perturbation",
      lambda c: _run(init_perturbation=math.nan, members=2)),
    C("rollout_bad_on_nonfinite", "rollout", "on_nonfinite='ignore'", E.ConfigError, "on_nonfinite",
      lambda c: _run(on_nonfinite="ignore")),
    C("closure_ar1_inf_sigma", "ClosureAR1", "sigma=inf", E.ConfigError, "sigma",
      lambda c: _policy("ClosureAR1", phi=0.5, sigma=math.inf)),
    C("closure_ar1_nan_sigma", "ClosureAR1", "sigma=nan", E.ConfigError, "sigma",
      lambda c: _policy("ClosureAR1", phi=0.5, sigma=math.nan)),
    C("closure_callable_nan", "rollout", "a closure callable returning NaN", E.NonFiniteError, "closure",
      lambda c: _run(lambda cond: cond.fields * math.nan, members=2)),
    C("closure_callable_overflow", "rollout", "a closure callable whose values overflow the state",
      E.NonFiniteError, "closure", _exploding),
    C("noise_ar1_callable", "rollout", "NoiseAR1 with a deterministic callable closure",
      E.IncompatibleComponentsError, "between", lambda c: _run(lambda cond: cond.fields, between=_policy("NoiseAR1"))),
    C("noise_ar1_deterministic", "rollout", "NoiseAR1 with deterministic=2 (frozen noise)",
      E.IncompatibleComponentsError, "between",
      lambda c: _run(_model(c), torch.randn(1, 16, 16), system=c.ns(), deterministic=2,
                     between=_policy("NoiseAR1"))),
    C("hold_physics_every_step_callable", "rollout", "Hold(physics_every_step=True) with a callable closure",
      E.IncompatibleComponentsError, "physics_every_step",
      lambda c: _run(lambda cond: cond.fields, between=_policy("Hold", physics_every_step=True))),
    C("noise_ar1_physics_every_step_str", "NoiseAR1", "physics_every_step='yes'", E.ConfigError, "physics_every_step",
      lambda c: _policy("NoiseAR1", rho=0.5, physics_every_step="yes")),
    C("deterministic_callable", "rollout", "deterministic=2 with a callable closure", E.IncompatibleComponentsError,
      "deterministic", lambda c: _run(lambda cond: cond.fields, deterministic=2)),
    C("model_nan_x_init", "ClosureModel.sample", "x_init with a NaN", E.NonFiniteError, "x_init",
      lambda c: c.model.sample(c.cond(), x_init=torch.full((1, 2, 1, 16, 16), math.nan))),
    C("model_nan_target_mean", "ClosureModel", "target_mean=[nan]", E.NonFiniteError, "target_mean",
      lambda c: __import__("stochclosure").ClosureModel("vp", {"type": "gaussian", "sde": "vp"},
                                                         target_mean=torch.tensor([math.nan]))),
    C("model_inf_target_std", "ClosureModel", "target_std=[inf]", E.NonFiniteError, "target_std",
      lambda c: __import__("stochclosure").ClosureModel("vp", {"type": "gaussian", "sde": "vp"},
                                                         target_std=torch.tensor([math.inf]))),
    C("l96_state_2d", "ensemble (lorenz96)", "state0 (1, 32, 32) for the 1-D ring", E.ShapeError, "state",
      lambda c: __import__("stochclosure").ensemble(
          __import__("stochclosure.systems", fromlist=["x"]).Lorenz96(K=8, J=4), _model(c),
          torch.randn(1, 32, 32), 2, 2, seed=0)),
    C("ensemble_negative_seed", "ensemble", "seed=-1", E.ConfigError, "seed",
      lambda c: __import__("stochclosure").ensemble(_linear(), None, torch.randn(1, 8, 8), 1, 2, seed=-1)),
    C("ensemble_huge_seed", "ensemble", "seed=2**32 (ensemble seeds also seed NumPy: 32-bit)", E.ConfigError, "seed",
      lambda c: __import__("stochclosure").ensemble(_linear(), None, torch.randn(1, 8, 8), 1, 2, seed=2**32)),
]
