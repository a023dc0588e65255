"""Rows of the bad-input battery: ``assimilate`` experiment configurations (the command's ``--config``)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from stochclosure import errors as E

from .base import BadInput, Context

GOOD: dict[str, Any] = {
    "system": {"type": "lorenz96", "K": 8, "J": 8, "dt": 0.002}, "dt": 0.01, "every": 2,
    "truth": {"spinup": 0.1, "seed": 1}, "observation": {"type": "grid", "every": 2, "std": 1.0},
    "closure": {"type": "cubic", "coefficients": [-0.8, -1.1, 0.0, 0.002]}, "filter": "etkf",
    "members": 4, "cycles": 2, "spinup_cycles": 0,
}


def _assimilate(ctx: Context, name: str, text: str | None = None, cli_out: bool = True, **changes: Any) -> Any:
    """``assimilate --config`` with GOOD changed by ``changes`` (``None`` deletes a key), or the raw ``text``."""
    from stochclosure.assimilation import command

    cfg = {**GOOD, **changes}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = ctx.path(f"da_{name}.yaml", yaml.safe_dump(cfg) if text is None else text)
    parser = argparse.ArgumentParser()
    command.add_args(parser)
    argv = ["--config", str(path), "--quiet", "--no-report"] + (["--out", str(ctx.folder / f"da_{name}")] if cli_out else [])
    return command.run(parser.parse_args(argv))


C = BadInput
CASES: list[BadInput] = [
    C("da_unknown_key", "assimilate --config", "a misspelt key 'membres'", E.ConfigError, "membres",
      lambda c: _assimilate(c, "unknown", membres=8)),
    C("da_no_system", "assimilate --config", "no system entry", E.ConfigError, "system",
      lambda c: _assimilate(c, "nosys", system=None)),
    C("da_one_member", "assimilate --config", "members: 1", E.ConfigError, "members",
      lambda c: _assimilate(c, "one", members=1)),
    C("da_members_text", "assimilate --config", "members: '20' (a string)", E.ConfigError, "members",
      lambda c: _assimilate(c, "memtext", members="20")),
    C("da_dt_yaml11", "assimilate --config", "dt: 1e-2 (YAML 1.1 reads it as text)", E.ConfigError, "dt",
      lambda c: _assimilate(c, "dt", text=yaml.safe_dump({k: v for k, v in GOOD.items() if k != "dt"}) + "dt: 1e-2\n")),
    C("da_spinup_cycles", "assimilate --config", "spinup_cycles >= cycles", E.ConfigError, "spinup_cycles",
      lambda c: _assimilate(c, "spin", spinup_cycles=2)),
    C("da_truth_key", "assimilate --config", "truth: {spin_up: 5}", E.ConfigError, "truth",
      lambda c: _assimilate(c, "truth", truth={"spin_up": 5})),
    C("da_observation_type", "assimilate --config", "observation type 'radar'", E.ConfigError, "observation",
      lambda c: _assimilate(c, "obs", observation={"type": "radar"})),
    C("da_regular_points", "assimilate --config", "points: {regular: 0}", E.ConfigError, "observation.points",
      lambda c: _assimilate(c, "pts", observation={"type": "points", "points": {"regular": 0}, "std": 0.1})),
    C("da_filter", "assimilate --config", "filter: kalman", E.ConfigError, "filter",
      lambda c: _assimilate(c, "flt", filter="kalman")),
    C("da_inflation", "assimilate --config", "inflation: 0.5 (deflation)", E.ConfigError, "factor",
      lambda c: _assimilate(c, "infl", inflation=0.5)),
    C("da_closure_noise", "assimilate --config", "closure noise 'ou'", E.ConfigError, "closure.noise",
      lambda c: _assimilate(c, "noise", closure={"type": "cubic", "noise": "ou"})),
    C("da_closure_key", "assimilate --config", "closure key 'coeffs'", E.ConfigError, "closure.coeffs",
      lambda c: _assimilate(c, "ckey", closure={"type": "cubic", "coeffs": [1, 2]})),
    C("da_checkpoint_missing", "assimilate --config", "a checkpoint closure whose file does not exist",
      E.ConfigError, "closure.path", lambda c: _assimilate(c, "ckpt", closure={"type": "checkpoint",
                                                                                 "path": "missing.pt"})),
    C("da_smagorinsky_ar1", "assimilate --config", "smagorinsky + ar1 without phi and sigma", E.ConfigError,
      "closure.phi", lambda c: _assimilate(c, "smag", closure={"type": "smagorinsky", "noise": "ar1"})),
    C("da_cubic_ns", "assimilate --config", "a cubic closure for Navier-Stokes", E.ConfigError, "closure",
      lambda c: _assimilate(c, "cubicns", system={"type": "navier_stokes_2d_subgrid", "n": 8, "n_fine": 16},
                            observation={"type": "grid", "every": 2, "std": 0.1, "spatial_dims": 2})),
    C("da_out_escapes", "assimilate --config", "out: ../../elsewhere (leaves the config's folder)", E.ConfigError,
      "out", lambda c: _assimilate(c, "outesc", cli_out=False, **{"out": "../../elsewhere"})),
    C("da_no_out", "assimilate --config", "no out: in the config and no --out", E.ConfigError, "out",
      lambda c: _assimilate(c, "noout", cli_out=False)),
]
