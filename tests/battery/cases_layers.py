"""Rows of the bad-input battery: the command line's config schemas (one checker, one path rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stochclosure import errors as E

from .base import BadInput, Context

C = BadInput


def _train(path: Path) -> Any:
    from stochclosure.cli.train import load_train_config

    return load_train_config(path)


def _rollout(path: Path) -> Any:
    from stochclosure.cli.rollout import load_rollout_config

    return load_rollout_config(path)


def _distill(c: Context, name: str, **changes: Any) -> Any:
    from stochclosure.cli.distill import load_distill_config

    cfg = {"teacher": "teacher_run/step-00000001", "data": {"path": str(c.folder / "ns.h5")}, "out": f"{name}-out",
           **changes}
    return load_distill_config(c.path(f"{name}.yaml", yaml.safe_dump(cfg)))


CASES: list[BadInput] = [
    C("schema_train_bool_for_int", "load_train_config", "data.history: true (a boolean for an integer)",
      E.ConfigError, "data.history", lambda c: _train(c.train_config("s-bool", **{"data.history": True}))),
    C("schema_train_block_not_mapping", "load_train_config", "model: fno (a name where a block is expected)",
      E.ConfigError, "'model'", lambda c: _train(c.train_config("s-block", model="fno"))),
    C("schema_train_channels_zero", "load_train_config", "model.channels: 0", E.ConfigError, "model.channels",
      lambda c: _train(c.train_config("s-channels", **{"model.channels": 0}))),
    C("schema_rollout_initial_path_escape", "load_rollout_config", "initial.path: ../../s.safetensors (leaves the "
      "config's folder)", E.ConfigError, "initial.path",
      lambda c: _rollout(c.rollout_config("s-init", initial={"path": "../../s.safetensors"}))),
    C("schema_rollout_model_escape", "load_rollout_config", "model: ../../ckpt (leaves the config's folder)",
      E.ConfigError, "'model'", lambda c: _rollout(c.rollout_config("s-model", model="../../ckpt"))),
    C("schema_distill_student_typo", "load_distill_config", "studnet: {} (typo)", E.ConfigError, "studnet",
      lambda c: _distill(c, "s-typo", studnet={})),
    C("schema_distill_steps_beyond_levels", "load_distill_config", "student: {levels: [1.0], steps: 2}",
      E.ConfigError, "student.steps", lambda c: _distill(c, "s-steps", student={"levels": [1.0], "steps": 2})),
    C("schema_distill_teacher_escape", "load_distill_config", "teacher: ../../t (leaves the config's folder)",
      E.ConfigError, "'teacher'", lambda c: _distill(c, "s-teacher", teacher="../../t")),
]
