"""The typed carry: a rollout continued from a serialised carry draws exactly what the uninterrupted
run draws, for every policy (the held draw, the AR(1) perturbation and the AR(1) latent go on)."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

import stochclosure as sc
from stochclosure.rollouts import (
    ClosureAR1,
    Hold,
    NoiseAR1,
    RolloutCarry,
    carry_from_tensors,
    carry_to_tensors,
    rollout,
)
from stochclosure.scores.analytic import GaussianScore
from stochclosure.systems import LinearRelaxation


@pytest.fixture(scope="module")
def setup():
    system = LinearRelaxation(n=8)
    model = sc.ClosureModel("vp", GaussianScore("vp", mean=0.0, std=0.5), {"type": "dpm_solver_pp_2m", "steps": 4})
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    return system, model, v0


@pytest.mark.parametrize("policy", [Hold(), ClosureAR1(phi=0.7, sigma=0.1, spectrum=(0.0, 1.0, 0.5)), NoiseAR1(0.8)],
                         ids=["hold", "closure_ar1", "noise_ar1"])
def test_a_serialised_carry_continues_to_the_uninterrupted_result(setup, policy):
    system, model, v0 = setup
    kw = dict(members=3, resample_every=3, between=policy, history=2)
    full = poutine.seed(rollout, rng_seed=0)(system, model, v0, 8, **kw)
    keys = full.trace.nodes["member_seed"]["value"]
    saved = {}

    def grab(carry: RolloutCarry) -> None:
        if carry.step == 4:  # mid-hold: a draw at 3, the next at 6
            saved["t"], saved["meta"] = carry_to_tensors(carry, prefix="c.")

    poutine.seed(rollout, rng_seed=0)(system, model, v0, 8, on_step=grab, **kw)
    start = carry_from_tensors(saved["t"], saved["meta"], prefix="c.")
    assert start.step == 4 and len(start.past) == 2 and start.policy.held is not None
    resumed = poutine.seed(poutine.condition(rollout, data={"member_seed": keys}), rng_seed=1)(
        system, model, v0, 8, start=start, **kw)
    assert torch.equal(resumed.states, full.states)
    assert sorted(resumed.closures) == [0, 3, 6] and torch.equal(resumed.closures[6], full.closures[6])


def test_start_must_be_a_carry(setup):
    system, model, v0 = setup
    with pytest.raises(sc.ConfigError, match="'start'"):
        rollout(system, model, v0, 2, start={"step": 0})
