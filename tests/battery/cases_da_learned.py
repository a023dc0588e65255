"""Rows of the bad-input battery: learned and registered closures in ``assimilate`` experiment configurations."""

from __future__ import annotations

from stochclosure import errors as E

from .base import BadInput
from .cases_da import _assimilate

C = BadInput
CASES: list[BadInput] = [
    C("da_options_not_mapping", "assimilate --config", "closure options given as a list", E.ConfigError,
      "closure.options", lambda c: _assimilate(c, "optlist", closure={"type": "adm", "options": [5]})),
    C("da_options_builtin", "assimilate --config", "options on a built-in cubic closure", E.ConfigError,
      "closure.options", lambda c: _assimilate(c, "optcubic", closure={"type": "cubic", "options": {"order": 5}})),
    C("da_checkpoint_dir_missing", "assimilate --config", "a checkpoint folder path that does not exist", E.ConfigError,
      "closure.path", lambda c: _assimilate(c, "nockpt", closure={"type": "checkpoint", "path": "missing/model"})),
    C("da_physics_every_step_cubic", "assimilate --config", "physics_every_step on a cubic closure", E.ConfigError,
      "closure.physics_every_step",
      lambda c: _assimilate(c, "pescubic", closure={"type": "cubic", "physics_every_step": True})),
]
