"""Rows of the bad-input battery: data assimilation (observation operators, filters, inflation, cycling)."""

from __future__ import annotations

from typing import Any

import torch

from stochclosure import errors as E

from .base import BadInput, Context


def _l96() -> Any:
    from stochclosure.systems import Lorenz96

    return Lorenz96(K=8, J=8, dt=2e-3)


def _assimilate(ctx: Context, **changes: Any) -> Any:
    from stochclosure.assimilation import GridObservation, assimilate

    kw: dict[str, Any] = dict(observation=GridObservation(std=1.0), filter="etkf", members=4, cycles=2,
                              steps_per_cycle=2, dt=0.01)
    kw.update(changes)
    return assimilate(_l96(), None, torch.zeros(1, 8, dtype=torch.float64), **kw)


def _foreign_checkpoint(ctx: Context) -> Any:
    path = ctx.folder / "assim.safetensors"
    _assimilate(ctx, checkpoint=path, seed=1)
    return _assimilate(ctx, checkpoint=path, seed=2)


def _analyse(ensemble: torch.Tensor, obs: torch.Tensor, op: Any = None, flt: str = "etkf") -> Any:
    from stochclosure.assimilation import GridObservation, filter_from_spec

    return filter_from_spec(flt).analyse(ensemble, obs, op or GridObservation(std=1.0))


def _nan_member() -> torch.Tensor:
    ens = torch.randn(4, 1, 8)
    ens[2, 0, 5] = float("nan")
    return ens


def _points(points: Any, **kw: Any) -> Any:
    from stochclosure.assimilation import PointObservation

    return PointObservation(points, **kw)


def _letkf_without_locations() -> Any:
    from stochclosure.assimilation import LinearObservation

    op = LinearObservation(torch.randn(3, 8), event_shape=(1, 8))
    return _analyse(torch.randn(4, 1, 8), torch.zeros(3), op, {"type": "letkf", "radius": 0.1})


def _particle_initial() -> Any:
    from stochclosure.assimilation import BootstrapParticleFilter, GridObservation

    pf = BootstrapParticleFilter(_l96(), None, GridObservation(std=1.0), particles=8, steps_per_cycle=1)
    return pf.run(torch.zeros(5, 1, 8), [torch.zeros(8)])


def _kalman_h() -> Any:
    from stochclosure.assimilation import Gaussian, kalman_analysis

    prior = Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    return kalman_analysis(prior, torch.zeros(2), torch.zeros(2, 4), torch.ones(2))


def _inflation(spec: Any) -> Any:
    from stochclosure.assimilation import inflation_from_spec

    return inflation_from_spec(spec)


C = BadInput
CASES: list[BadInput] = [
    C("assim_points_3d", "PointObservation", "points of shape (4, 3)", E.ShapeError, "points",
      lambda c: _points(torch.zeros(4, 3))),
    C("assim_points_nan", "PointObservation", "a NaN coordinate", E.NonFiniteError, "points",
      lambda c: _points(torch.tensor([[float("nan"), 0.5]]))),
    C("assim_zero_std", "PointObservation", "std=0 (no observation noise)", E.ConfigError, "std",
      lambda c: _points(torch.zeros(2, 2), std=0.0)),
    C("assim_one_member", "ETKF.analyse", "an ensemble of 1 member", E.ShapeError, "ensemble",
      lambda c: _analyse(torch.randn(1, 1, 8), torch.zeros(8))),
    C("assim_nan_member", "ETKF.analyse", "a NaN in one member", E.NonFiniteError, "ensemble",
      lambda c: _analyse(_nan_member(), torch.zeros(8))),
    C("assim_obs_length", "ETKF.analyse", "5 observed values for 8 observations", E.ShapeError, "obs_values",
      lambda c: _analyse(torch.randn(4, 1, 8), torch.zeros(5))),
    C("assim_letkf_no_locations", "LETKF.analyse", "a matrix operator without positions", E.ConfigError, "op",
      lambda c: _letkf_without_locations()),
    C("assim_letkf_radius", "LETKF", "radius=0", E.ConfigError, "radius",
      lambda c: _analyse(torch.randn(4, 1, 8), torch.zeros(8), None, {"type": "letkf", "radius": 0.0})),
    C("assim_unknown_filter", "assimilate", "filter='kalman'", E.ConfigError, "filter",
      lambda c: _assimilate(c, filter="kalman")),
    C("assim_deflation", "MultiplicativeInflation", "factor 0.9 (< 1)", E.ConfigError, "factor",
      lambda c: _inflation(0.9)),
    C("assim_inflation_spec", "inflation_from_spec", "{'type': 'rtps'}", E.ConfigError, "inflation",
      lambda c: _inflation({"type": "rtps"})),
    C("assim_one_member_run", "assimilate", "members=1", E.ConfigError, "members",
      lambda c: _assimilate(c, members=1)),
    C("assim_initial_ensemble", "assimilate", "initial_ensemble of 3 members for members=4", E.ShapeError,
      "initial_ensemble", lambda c: _assimilate(c, initial_ensemble=torch.zeros(3, 1, 8))),
    C("assim_cycle_length", "assimilate", "a cycle of 0.0015 with a full-model step of 0.002", E.ConfigError,
      "steps_per_cycle", lambda c: _assimilate(c, dt=0.0015, steps_per_cycle=1)),
    C("assim_managed_option", "assimilate", "start= (the driver manages the rollout carry)", E.ConfigError,
      "start", lambda c: _assimilate(c, start={})),
    C("assim_foreign_checkpoint", "assimilate", "the checkpoint of a run with another seed", E.ConfigError,
      "checkpoint", _foreign_checkpoint),
    C("assim_corrupt_checkpoint", "assimilate", "a checkpoint file of junk bytes", E.CheckpointError, "checkpoint",
      lambda c: _assimilate(c, checkpoint=c.path("junk_assim.safetensors", b"junk" * 10))),
    C("assim_particles_initial", "BootstrapParticleFilter.run", "5 initial particles for particles=8",
      E.ShapeError, "initial", lambda c: _particle_initial()),
    C("assim_kalman_h", "kalman_analysis", "H (2, 4) for a state of 3", E.ShapeError, "H", lambda c: _kalman_h()),
]
