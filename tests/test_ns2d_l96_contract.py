"""The shared system contract suite over the Navier–Stokes and Lorenz-96 systems."""

from __future__ import annotations

import pytest

from stochclosure.registry import get
from stochclosure.testing import check_system

NAMES = ["navier_stokes_2d", "navier_stokes_2d_subgrid", "lorenz96"]


@pytest.mark.parametrize("name", NAMES)
def test_registered_system_passes_the_contract_suite(name):
    cls = get("system", name)
    check_system(cls.example())
    assert cls.example().spec()["type"] == name


@pytest.mark.parametrize("name", NAMES)
def test_config_rebuilds_the_system(name):
    sys_ = get("system", name).example()
    again = type(sys_)(**sys_.config)
    assert again.config == sys_.config
