"""Input guards: half-precision conditions, generators, ensemble seeds, memory estimates, shipped configs.

The bad inputs themselves are rows of the battery (tests/battery/cases_guards.py); these tests pin
what must keep working beside each guard, the guards' limits, and the memory estimate's arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from battery import CASES
from battery.cases_guards import COVERED_ELSEWHERE

import stochclosure as sc
from stochclosure import _memory
from stochclosure._types import Conditioning, check_condition_dtype, check_generator
from stochclosure.config import ENSEMBLE_SEED_LIMIT, check_seed

ROOT = Path(__file__).resolve().parents[1]


def test_every_case_covered_elsewhere_names_a_row_of_the_battery():
    names = {c.name for c in CASES}
    missing = {case: row for case, row in COVERED_ELSEWHERE.items() if row not in names}
    assert not missing, missing


# -- half-precision conditions ------------------------------------------------------------------------------------

def _cond(dtype: torch.dtype) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(fields=torch.randn(2, 1, 8, 8, generator=g).to(dtype),
                        obs_values=torch.randn(2, 1, 4, generator=g).to(dtype),
                        obs_points=torch.tensor([[0.0, 0.0], [0.25, 0.5], [0.5, 0.25], [0.75, 0.75]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_and_double_precision_conditions_pass(dtype):
    cond = _cond(dtype)
    assert cond.validate() is cond and check_condition_dtype(cond) is cond


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_conditions_are_refused_with_the_cast_as_fix(dtype):
    with pytest.raises(sc.DTypeError, match=r"'cond.fields'.*float32 or float64.*cond.to\(torch.float32\)"):
        _cond(dtype).validate()
    only_points = Conditioning(obs_values=torch.randn(1, 1, 2), obs_points=torch.tensor([[0.1, 0.2], [0.3, 0.4]],
                                                                                         dtype=dtype))
    with pytest.raises(sc.DTypeError, match="'cond.obs_points'"):
        check_condition_dtype(only_points)


def test_a_cast_condition_samples_like_a_single_precision_one():
    model = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, {"type": "euler_maruyama",
                                                                                  "steps": 3})
    cond = _cond(torch.float32)
    a = model.sample(cond, generator=torch.Generator().manual_seed(3))
    b = model.sample(_cond(torch.float16).to(torch.float32), generator=torch.Generator().manual_seed(3))
    assert a.shape == b.shape == (1, 2, 1, 8, 8) and torch.equal(a, b)  # the Gaussian score ignores the condition


# -- generators ---------------------------------------------------------------------------------------------------

def test_generator_check_passes_none_and_torch_generators_unchanged():
    g = torch.Generator().manual_seed(0)
    assert check_generator(None) is None and check_generator(g) is g
    with pytest.raises(sc.ConfigError, match=r"'generator'.*torch.Generator\(\).manual_seed\(7\)"):
        check_generator(7)
    with pytest.raises(sc.ConfigError, match="'generator'"):
        check_generator(True)


def test_seeded_generators_still_reproduce_initial_states():
    ns = sc.resolve("system", {"type": "navier_stokes_2d", "n": 16})
    a = ns.initial_state(2, generator=torch.Generator().manual_seed(5))
    b = ns.initial_state(2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# -- ensemble seeds -----------------------------------------------------------------------------------------------

def test_ensemble_seed_limit_is_the_one_pyro_accepts():
    state0 = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0))
    ns = sc.resolve("system", {"type": "navier_stokes_2d", "n": 16})
    res = sc.ensemble(ns, None, state0, 1, 2, seed=ENSEMBLE_SEED_LIMIT - 1, progress=False)
    assert res.members.shape[1] == 2
    with pytest.raises(ValueError):
        sc.ensemble(ns, None, state0, 1, 2, seed=ENSEMBLE_SEED_LIMIT, progress=False)
    assert check_seed(ENSEMBLE_SEED_LIMIT - 1, limit=ENSEMBLE_SEED_LIMIT) == 2**32 - 1
    with pytest.raises(sc.ConfigError, match=r"'seed'.*\[0, 2\*\*32\)"):
        check_seed(ENSEMBLE_SEED_LIMIT, limit=ENSEMBLE_SEED_LIMIT)
    assert check_seed(2**40) == 2**40  # torch generators keep the 64-bit rule


def test_rollout_config_accepts_the_largest_ensemble_seed(tmp_path):
    from stochclosure.rollout_cli import load_rollout_config

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "none", "system": "navier_stokes_2d", "seed": 2**32 - 1,
                                    "out": "e.safetensors"}))
    assert load_rollout_config(path)["seed"] == 2**32 - 1


# -- memory estimates ---------------------------------------------------------------------------------------------

def test_allocation_bytes_is_exact_for_sizes_beyond_int64():
    assert _memory.allocation_bytes((3, 5), torch.float64) == 120
    assert _memory.allocation_bytes((10**12, 10**12), torch.float32, copies=2) == 8 * 10**24


def test_check_allocation_refuses_only_what_exceeds_the_available_memory(monkeypatch):
    monkeypatch.delenv(_memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 4000)
    assert _memory.check_allocation("n", (1000,), torch.float32) == 4000  # exactly what is free: accepted
    with pytest.raises(sc.ResourceError, match=r"'n'.*n = 1001.*3\.73e-06 GiB available.*smaller n.*"
                                               + _memory.SKIP_ENV) as info:
        _memory.check_allocation("n", (1001,), torch.float32, value=1001)
    assert isinstance(info.value, MemoryError)  # generic `except MemoryError` still catches it
    monkeypatch.setenv(_memory.SKIP_ENV, "1")
    assert _memory.check_allocation("n", (10**15,), torch.float32) == 4 * 10**15


def test_check_allocation_never_refuses_when_memory_is_unknown(monkeypatch):
    monkeypatch.delenv(_memory.SKIP_ENV, raising=False)
    assert _memory.available_bytes("meta") is None
    assert _memory.check_allocation("members", (10**15,), torch.float32, "meta") == 4 * 10**15


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable: 64 kB\nSwapFree: 16 kB\n")
    assert _memory._meminfo_bytes(meminfo) == 80 * 1024
    meminfo.write_text("garbage\n")
    assert _memory._meminfo_bytes(meminfo) is None
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("400\n")
    assert _memory._cgroup_bytes(tmp_path) == 600
    (tmp_path / "memory.max").write_text("max\n")
    assert _memory._cgroup_bytes(tmp_path) is None
    here = _memory.available_bytes()
    assert here is None or here > 0


def test_ensemble_estimate_names_the_dominant_size_and_passes_real_runs(monkeypatch):
    monkeypatch.delenv(_memory.SKIP_ENV, raising=False)
    # the demo's default: 16 members, 200 steps recorded every 10, 32^2 float32 states
    assert _memory.check_ensemble_memory(16, 200, 10, (1, 32, 32)) == (21 + 2) * 16 * 32 * 32 * 4
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 10**6)
    with pytest.raises(sc.ResourceError, match="'members'"):
        _memory.check_ensemble_memory(10**6, 2, 1, (1, 16, 16))
    with pytest.raises(sc.ResourceError, match="'n_steps'"):
        _memory.check_ensemble_memory(2, 10**6, 1, (1, 16, 16))


def test_generate_counts_one_record_of_the_batch_it_will_really_simulate(monkeypatch):
    from stochclosure.data.generate import _check_batch_memory

    monkeypatch.delenv(_memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 1000)
    cfg = {"batch_size": 10**6, "trajectories": 2, "dtype": "float32", "device": "cpu"}
    _check_batch_memory(cfg, 125)  # 2 trajectories x 125 float32 values = 1000 bytes: fits
    with pytest.raises(sc.ResourceError, match="'config.batch_size'.*1000000"):
        _check_batch_memory({**cfg, "trajectories": 3}, 125)


# -- shipped configurations ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("train*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_satisfy_the_config_path_rule(config):
    from stochclosure.train_cli import load_train_config

    cfg = load_train_config(config)  # a path leaving the config's folder (and its `root`) is a ConfigError
    work = str(ROOT / "benchmarks" / "work")
    assert cfg["data"]["path"].startswith(work) and cfg["out"].startswith(work), (cfg["data"]["path"], cfg["out"])
