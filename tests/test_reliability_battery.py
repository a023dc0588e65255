"""Every row of the bad-input battery (tests/battery) raises its typed error.

The same table generates benchmarks/results/reliability.md (benchmarks/reliability.py).
"""

from __future__ import annotations

import pytest
from battery import CASES, Context, run_case

from stochclosure import errors

pytest.importorskip("stochclosure_neuralop")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("battery"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_its_typed_error_naming_the_argument(case, ctx):
    out = run_case(case, ctx)
    assert out.got == case.error.__name__, f"{case.entry}: {case.input}: got {out.got}: {out.message}"
    assert case.argument in out.message, out.message
    if not issubclass(case.error, Warning):
        assert "expected" in out.message or "unknown" in out.message or "built for" in out.message, out.message
    if case.cli:
        assert out.exit_code == 2
    assert out.ok
    assert not ctx.marker.exists(), "a crafted file executed code"


def test_the_table_covers_every_error_kind():
    names = {c.name for c in CASES}
    assert len(names) == len(CASES), "duplicate case names"
    kinds = {c.error for c in CASES}
    wanted = {errors.ShapeError, errors.NonFiniteError, errors.DTypeError, errors.DeviceError, errors.ConfigError,
              errors.UnknownPluginError, errors.IncompatibleComponentsError, errors.CheckpointError,
              errors.DatasetError, errors.ResolutionWarning}
    assert wanted <= kinds, wanted - kinds
    assert sum(c.cli for c in CASES) >= 10  # the command line gets its own rows
