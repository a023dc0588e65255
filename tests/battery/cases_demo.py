"""Rows of the bad-input battery: the demo's spread perturbation (``forcing_scale``)."""

from __future__ import annotations

from typing import Any

from stochclosure import errors as E

from .base import BadInput, Context


def _demo(c: Context, name: str, **kw: Any) -> Any:
    from stochclosure.cli.demo import run_demo

    return run_demo(c.folder / name, progress=False, **kw)


C = BadInput
CASES: list[BadInput] = [
    C("demo_forcing_scale_negative", "run_demo", "forcing_scale=-1", E.ConfigError, "'forcing_scale'",
      lambda c: _demo(c, "dfn", forcing_scale=-1.0)),
    C("demo_forcing_scale_nan", "run_demo", "forcing_scale=nan", E.ConfigError, "'forcing_scale'",
      lambda c: _demo(c, "dfnan", forcing_scale=float("nan"))),
    C("cli_demo_forcing_scale_negative", "stochclosure demo", "--forcing-scale -1", E.ConfigError,
      "'--forcing-scale'", lambda c: ["demo", "--forcing-scale", "-1", "--out", str(c.folder / "dcfn")], cli=True),
]
