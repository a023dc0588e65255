"""``benchmarks/closures.py``: the fresh held-out cases of the online studies, in either filter setting."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark

pytest.importorskip("stochclosure_neuralop")

GAUSS, SHARP = ("gaussian", "two_thirds"), ("spectral", "exact")


def _module():
    return load_benchmark("closures.py", "closures_study")


def _cfg(mod):
    return {**mod.QUICK, "spinup_steps": 4, "online40": {**mod.QUICK["online40"], "cases": 2, "records": 3},
            "online_sharp40": {**mod.QUICK["online_sharp40"], "records": 2}}


def test_dns_cases_filters_the_same_dns_in_another_setting_and_keeps_the_default_stage():
    mod = _module()
    cfg = _cfg(mod)
    n = cfg["n"]
    base = mod.dns_cases(cfg)
    # the default call is the Gaussian-filter stage, its keys unchanged
    assert set(base) == {"w", "seed", "dns_seconds_per_time_unit"} and base["w"].shape == (2, 3, 1, n, n)
    assert int(base["seed"]) == 1000 * cfg["seed"] + cfg["online40"]["seed_offset"]
    sharp = mod.dns_cases(cfg, SHARP, records=2, also=(GAUSS,))
    assert set(sharp) == {"w", "w:gaussian/two_thirds", "seed", "dns_seconds_per_time_unit"}
    assert sharp["w"].shape == (2, 2, 1, n, n)
    # no stochastic forcing: the rerun with fewer records is the same DNS, bit for bit
    assert torch.equal(sharp["w:gaussian/two_thirds"], base["w"][:, :2])
    # "w" is the sharp filter of the cases' start, recomputed here from the seed and the spin-up
    sysm = mod.system_of(cfg, SHARP)
    gen = torch.Generator().manual_seed(int(base["seed"]))
    w = sysm.fine_initial_state(2, generator=gen, dtype=torch.float64)
    w = sysm.fine.simulate(w, cfg["spinup_steps"], generator=gen)
    assert torch.equal(sharp["w"][:, 0], sysm.filter(w).float())
    assert not torch.equal(sharp["w"], sharp["w:gaussian/two_thirds"])  # the filters differ


def test_dns_cases_rejects_a_record_count_below_one():
    from stochclosure.errors import ConfigError

    mod = _module()
    with pytest.raises(ConfigError, match="records"):
        mod.dns_cases(_cfg(mod), SHARP, records=0)


def test_sharp_cases_refuses_cases_that_are_not_the_cached_gaussian_filter_cases(tmp_path):
    from stochclosure.errors import DatasetError

    mod = _module()
    cfg = _cfg(mod)
    got = mod.closures_sharp.sharp_cases(mod, cfg, tmp_path, "spectral-exact", SHARP)
    assert got["guard"] == 0.0 and got["w"].shape[1] == 2  # the cached Gaussian cases were written by the same DNS
    other = tmp_path / "other"
    other.mkdir()
    wrong = mod.dns_cases({**cfg, "online40": {**cfg["online40"], "seed_offset": 101}})  # other trajectories
    mod._save(other / "dns-online40-cases.pt", wrong)
    with pytest.raises(DatasetError, match="round-off"):
        mod.closures_sharp.sharp_cases(mod, cfg, other, "spectral-exact", SHARP)
