"""Observed states as pyro sample sites ``obs/{s}`` in a rollout: trace, log_prob and condition."""

from __future__ import annotations

import pyro.distributions as pdist
import pytest
import torch
from pyro import poutine

from stochclosure.assimilation.observations import GridObservation
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.rollouts import rollout
from stochclosure.systems import LinearRelaxation
from stochclosure.testing import assert_close


@pytest.fixture(scope="module")
def setup():
    system = LinearRelaxation(n=8)
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    op = GridObservation(every=2, std=0.5, spatial_dims=2)
    return system, v0, op


def test_observed_sites_are_in_the_trace_with_the_right_log_prob(setup):
    system, v0, op = setup
    y = torch.randn(3, op.n_obs(v0.shape), generator=torch.Generator().manual_seed(1))  # steps 2, 4, 6
    tr = poutine.trace(rollout).get_trace(system, None, v0, 6, members=3, observe=op, observed=y, observe_every=2)
    names = [k for k in tr.nodes if k.startswith("obs/")]
    assert names == ["obs/2", "obs/4", "obs/6"]
    for i, s in enumerate((2, 4, 6)):
        site = tr.nodes[f"obs/{s}"]
        assert site["is_observed"]
        state = tr.nodes[f"state/{s}"]["value"]                     # (members, C, n, n)
        loc = state[..., ::2, ::2].reshape(3, -1)
        want = pdist.Normal(loc.double(), 0.5).log_prob(y[i].double()).sum(-1)
        assert_close(site["fn"].log_prob(site["value"]).double(), want, rtol=1e-5, what=f"log_prob of obs/{s}")
    tr.compute_log_prob()
    assert tr.nodes["obs/4"]["log_prob"].shape == (3,)


def test_a_callable_gives_the_observations_and_condition_sets_them(setup):
    system, v0, op = setup
    p = op.n_obs(v0.shape)
    tr = poutine.trace(rollout).get_trace(system, None, v0, 2, observe=op, observed=lambda s: torch.full((p,), float(s)))
    assert torch.equal(tr.nodes["obs/1"]["value"], torch.full((p,), 1.0))
    data = {"obs/2": torch.zeros(p)}
    tr2 = poutine.trace(poutine.condition(rollout, data=data)).get_trace(
        system, None, v0, 2, observe=op, observed=lambda s: torch.full((p,), float(s)))
    assert torch.equal(tr2.nodes["obs/2"]["value"], torch.zeros(p)) and tr2.nodes["obs/2"]["is_observed"]


def test_observe_errors_name_the_argument(setup):
    system, v0, op = setup
    with pytest.raises(ConfigError, match="'observed'"):
        rollout(system, None, v0, 2, observe=op)
    with pytest.raises(ShapeError, match="'observed'"):
        rollout(system, None, v0, 4, observe=op, observed=torch.zeros(1, op.n_obs(v0.shape)))
