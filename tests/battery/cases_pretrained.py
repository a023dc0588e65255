"""Rows of the bad-input battery: the shipped pretrained closures (the subgrid law's test set)."""

from __future__ import annotations

from typing import Any

from stochclosure import errors as E

from .base import BadInput, Context


def _test_set(c: Context, spec: dict[str, Any]) -> Any:
    from stochclosure import pretrained

    return pretrained.subgrid_test_set(pretrained.pretrained_system(pretrained.SUBGRID), spec)


C = BadInput
CASES: list[BadInput] = [
    C("pretrained_test_set_no_trajectories", "pretrained.subgrid_test_set", "trajectories=0", E.ConfigError,
      "spec", lambda c: _test_set(c, {"seed": 0, "trajectories": 0, "spinup_steps": 0, "records": 1,
                                      "record_every": 1})),
    C("pretrained_test_set_missing_keys", "pretrained.subgrid_test_set", "a spec with only a seed", E.ConfigError,
      "spec", lambda c: _test_set(c, {"seed": 0})),
    C("pretrained_unknown_name", "pretrained.load_pretrained", "a name that is not shipped", E.UnknownPluginError,
      "'no_such_closure'", lambda c: __import__("stochclosure.pretrained").pretrained.load_pretrained("no_such_closure")),
]
