"""Rollout guards: non-finite states raise (naming step and members) or are marked and frozen; bad
options and states are refused before any work."""

from __future__ import annotations

import math

import pytest
import torch

import stochclosure as sc
from stochclosure.errors import ConfigError, NonFiniteError, ShapeError
from stochclosure.rollouts import ClosureAR1, ensemble, rollout
from stochclosure.systems import LinearRelaxation, Lorenz96


class BlowUp:
    """A linear relaxation whose case ``bad`` turns NaN at solver step ``at`` (0-based)."""

    spatial_dims = 2

    def __init__(self, at: int, bad: int) -> None:
        self.inner, self.at, self.bad, self.calls = LinearRelaxation(n=8), at, bad, 0
        self.dt = self.inner.dt

    def check_state(self, state):
        self.inner.check_state(state)

    def step(self, state, closure_term, dt=None):
        out = self.inner.step(state, closure_term, dt)
        if self.calls == self.at:
            out = out.clone()
            out[self.bad] = math.nan
        self.calls += 1
        return out


def _cases(system, b=3):
    return system.inner.initial_state(b, generator=torch.Generator().manual_seed(0))


def test_a_state_turning_nan_raises_naming_the_step_and_the_member():
    system = BlowUp(at=2, bad=1)
    with pytest.raises(NonFiniteError, match=r"'state'.*after step 3 in members \[\(1,\)\]"):
        rollout(system, None, _cases(system), 5)


def test_marked_members_are_frozen_and_the_others_go_on():
    system = BlowUp(at=2, bad=1)
    res = rollout(system, None, _cases(system), 5, on_nonfinite="mark")
    clean = rollout(LinearRelaxation(n=8), None, _cases(system), 5)
    assert res.nonfinite_step == 3 and res.finite_members.tolist() == [True, False, True]
    assert bool(torch.isfinite(res.states).all())
    assert torch.equal(res.states[:, [0, 2]], clean.states[:, [0, 2]])        # the others are untouched
    assert torch.equal(res.states[3:, 1], res.states[2, 1].expand(3, *res.states.shape[2:]))   # frozen
    ok = rollout(LinearRelaxation(n=8), None, _cases(system), 2, on_nonfinite="mark")
    assert ok.nonfinite_step is None and ok.finite_members is None


def test_a_closure_callable_returning_nan_is_a_typed_error():
    system = LinearRelaxation(n=8)
    v0 = system.initial_state(1)[0]
    with pytest.raises(NonFiniteError, match=r"'closure'.*step 0"):
        rollout(system, lambda c: c.fields * math.nan, v0, 3, members=2)

    def bad_for_member_1(c):
        u = torch.zeros_like(c.fields)
        u[1] = math.nan
        return u

    res = rollout(system, bad_for_member_1, v0, 3, members=3, on_nonfinite="mark")   # marked, not raised
    assert res.nonfinite_step == 1 and res.finite_members.tolist() == [True, False, True]
    assert bool(torch.isfinite(res.states).all())


@pytest.mark.parametrize("kw, error, arg", [
    ({"dt": -0.01}, ConfigError, "dt"), ({"dt": math.nan}, ConfigError, "dt"),
    ({"history": -1}, ConfigError, "history"), ({"init_perturbation": math.nan}, NonFiniteError, "init_perturbation"),
    ({"init_perturbation": math.inf}, NonFiniteError, "init_perturbation"),
    ({"on_nonfinite": "ignore"}, ConfigError, "on_nonfinite"), ({"observe_every": 0}, ConfigError, "observe_every"),
])
def test_bad_options_are_refused_before_any_step(kw, error, arg):
    system = LinearRelaxation(n=8)
    with pytest.raises(error, match=f"'{arg}'"):
        rollout(system, None, system.initial_state(1)[0], 3, **kw)


def test_closure_ar1_refuses_non_finite_sigma():
    for bad in (math.inf, math.nan, -1.0):
        with pytest.raises(ConfigError, match="'sigma'"):
            ClosureAR1(phi=0.5, sigma=bad)


def test_the_system_checks_the_state_before_any_network():
    def network(cond):  # must never run
        raise AssertionError("the closure ran before the state was checked")

    with pytest.raises(ShapeError, match=r"'state'.*K=8"):
        ensemble(Lorenz96(K=8, J=4), network, torch.randn(1, 32, 32), 2, 2, seed=0)


def test_closure_model_refuses_non_finite_inputs():
    score = {"type": "gaussian", "sde": "vp", "std": 1.0}
    for mean, std in ((math.nan, 1.0), (0.0, math.inf)):
        with pytest.raises(NonFiniteError, match="target_mean/target_std"):
            sc.ClosureModel("vp", score, target_mean=torch.tensor([mean]), target_std=torch.tensor([std]))
    model = sc.ClosureModel("vp", score, {"type": "euler_maruyama", "steps": 2})
    x = torch.zeros(1, 1, 1, 4, 4)
    x[0, 0, 0, 1, 1] = math.nan
    with pytest.raises(NonFiniteError, match="'x_init'"):
        model.sample(None, grid=(4, 4), x_init=x)


def test_ensemble_seeds_are_checked_before_any_work():
    system = LinearRelaxation(n=8)
    v0 = system.initial_state(1)[0]
    for bad in (-1, 2**32, 2**64, 1.5, True):
        with pytest.raises(ConfigError, match="'seed'"):
            ensemble(system, None, v0, 1, 2, seed=bad, init_perturbation=0.1)
    a = ensemble(system, None, v0, 1, 2, seed=2**32 - 1, init_perturbation=0.1)
    b = ensemble(system, None, v0, 1, 2, seed=2**32 - 1, init_perturbation=0.1)
    assert torch.equal(a.states, b.states)
