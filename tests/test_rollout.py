"""The rollout as a pyro program: handlers, Predictive, seeds, policies, results and calibration."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

import stochclosure as sc
from stochclosure import metrics, plots
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.rollouts import (
    ClosureAR1,
    NoiseAR1,
    StreamedObservations,
    ensemble,
    regular_points,
    rollout,
)
from stochclosure.scores.analytic import GaussianScore
from stochclosure.systems import LinearRelaxation
from stochclosure.testing import assert_close


def exact_closure(system: LinearRelaxation, sampler: dict | None = None) -> sc.ClosureModel:
    """The system's exact closure law as a ClosureModel (score in per-channel normalised units)."""
    law = system.closure_law()
    grf = dict(law["grf"])
    std = math.sqrt(float(system.noise_cov.variance().mean()) / system.dt)
    grf["scale"] = grf["scale"] / std**2
    score = GaussianScore("vp", mean=0.0, grf=grf)
    return sc.ClosureModel("vp", score, sampler or {"type": "probability_flow_heun", "steps": 20},
                           target_mean=torch.tensor([float(law["mean"])]), target_std=torch.tensor([std]))


@pytest.fixture(scope="module")
def small():
    system = LinearRelaxation(n=8, forcing_mean=0.3)
    model = exact_closure(system, {"type": "euler_maruyama", "steps": 8})
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    return system, model, v0


def reference_run(system, state0, n_steps, generator):
    """The full system: the true closure drawn at every step."""
    states, closures = [state0], []
    s = state0
    for _ in range(n_steps):
        u = system.closure_sample(s.shape[0], generator=generator)
        closures.append(u)
        s = system.step(s, u)
        states.append(s)
    return torch.stack(states), closures


# -- pyro's handlers ----------------------------------------------------------------------------------------
def test_replay_reproduces_a_rollout_exactly(small):
    system, model, v0 = small
    for kw in ({}, {"resample_every": 2, "between": ClosureAR1(0.9, 0.5)}, {"between": NoiseAR1(0.8)},
               {"init_perturbation": 0.1, "keyed": False}):
        tr = poutine.trace(rollout).get_trace(system, model, v0, 5, members=3, **kw)
        again = poutine.replay(rollout, trace=tr)(system, model, v0, 5, members=3, **kw)
        assert torch.equal(again.final, tr.nodes["state/5"]["value"]), kw
        assert torch.equal(again.states, tr.nodes["_RETURN"]["value"].states), kw


def test_condition_with_true_closures_reproduces_the_full_system(small):
    system, model, _ = small
    v0 = system.initial_state(3, generator=torch.Generator().manual_seed(1))  # 3 cases
    truth, closures = reference_run(system, v0, 6, torch.Generator().manual_seed(2))
    data = {f"closure/{s}": u for s, u in enumerate(closures)}
    res = poutine.condition(rollout, data=data)(system, model, v0, 6)
    assert res.batch_dims == ("cases",)
    assert torch.equal(res.states, truth)
    # inject at chosen steps only, with an ensemble: those steps use the truth for every member
    part = poutine.condition(rollout, data={"closure/0": closures[0]})(system, model, v0, 2, members=4)
    assert torch.equal(part.states[1], truth[1].expand(4, 3, 1, 8, 8))
    assert part.spread[2].abs().max() > 0


def test_predictive_plate_equals_a_sequential_loop_with_the_same_seeds(small):
    system, model, v0 = small
    pyro.set_rng_seed(3)
    out = Predictive(rollout, num_samples=4, parallel=True, return_sites=["member_seed", "state/5", "closure/4"])(
        system, model, v0, 5)
    assert out["state/5"].shape == (4, 1, 8, 8)
    for i in range(4):
        one = poutine.condition(rollout, {"member_seed": out["member_seed"][i]})(system, model, v0, 5)
        # float32 batched vs single-row kernels may differ in the last bits (measured: <= 1.6e-7 of the
        # magnitude for states, <= 3e-7 for closures, which come out of 8 sampler steps of FFTs)
        assert_close(one.final, out["state/5"][i], rtol=1e-6, what="member state, single vs batched")
        assert_close(one.closures[4], out["closure/4"][i], rtol=2e-6, what="member closure, single vs batched")
    # and Predictive's own sequential mode agrees with its vectorised one
    seq = Predictive(rollout, posterior_samples={"member_seed": out["member_seed"]}, parallel=False,
                     return_sites=["state/5"])(system, model, v0, 5)
    assert_close(seq["state/5"], out["state/5"], rtol=1e-6, what="Predictive sequential vs vectorised")


def test_members_plate_matches_single_member_runs(small):
    system, model, v0 = small
    res = ensemble(system, model, v0, 4, members=5, seed=0)
    seeds = res.trace.nodes["member_seed"]["value"]
    for i in (0, 3):
        one = poutine.condition(rollout, {"member_seed": seeds[i]})(system, model, v0, 4)
        assert_close(one.states, res.members[:, i], rtol=1e-6, what="single-member run vs its ensemble member")


def test_same_seed_same_ensemble(small):
    system, model, v0 = small
    for keyed in (True, False):
        a = ensemble(system, model, v0, 4, members=6, seed=1, keyed=keyed)
        b = ensemble(system, model, v0, 4, members=6, seed=1, keyed=keyed)
        c = ensemble(system, model, v0, 4, members=6, seed=2, keyed=keyed)
        assert torch.equal(a.states, b.states) and not torch.equal(a.states, c.states)
    pyro.set_rng_seed(4)
    d = rollout(system, model, v0, 3, members=2)
    pyro.set_rng_seed(4)
    e = rollout(system, model, v0, 3, members=2)
    assert torch.equal(d.states, e.states)


def test_block_hides_closure_sites(small):
    system, model, v0 = small
    hidden = poutine.block(rollout, hide_fn=lambda msg: msg["type"] == "sample" and msg["name"].startswith("closure/"))
    tr = poutine.trace(hidden).get_trace(system, model, v0, 3, members=2)
    assert not [k for k in tr.nodes if k.startswith("closure/")]
    assert "state/3" in tr.nodes
    with poutine.block():
        res = rollout(system, model, v0, 3, members=2)
    assert res.final.shape == (2, 1, 8, 8) and "closure/2" in res.trace.nodes


# -- options ----------------------------------------------------------------------------------------------------
def test_resample_every_holds_the_closure_in_between(small):
    system, model, v0 = small
    res = ensemble(system, model, v0, 7, members=2, seed=0, resample_every=3)
    assert sorted(res.closures) == [0, 3, 6]
    # recompute with a plain loop holding each draw for three steps
    s = res.states[0]
    for k in range(7):
        s = system.step(s, res.closures[3 * (k // 3)])
        assert torch.equal(s, res.states[k + 1])


def test_closure_ar1_runs_through_fresh_draws(small):
    system, model, v0 = small
    tr = poutine.trace(rollout).get_trace(system, model, v0, 6, members=2, resample_every=3,
                                          between=ClosureAR1(phi=1.0, sigma=0.2))
    names = [k for k in tr.nodes if k.startswith("closure_ar/")]
    assert names == [f"closure_ar/{k}" for k in range(6)]
    # the state increments reveal the closure used: u = (v' - v) / dt + gamma v
    st = [tr.nodes[f"state/{k}"]["value"] for k in range(7)]
    used = [(st[k + 1] - st[k]) / system.dt + system.gamma * st[k] for k in range(6)]
    xi = [tr.nodes[f"closure_ar/{k}"]["value"] for k in range(6)]
    held = {k: tr.nodes[f"closure/{3 * (k // 3)}"]["value"] for k in range(6)}
    walk = 0.2 * torch.cumsum(torch.stack(xi), 0)  # a random walk from 0.2 xi_0, never reset
    scale = float(held[0].abs().max())
    for k in range(6):
        assert_close(used[k] - held[k], walk[k], rtol=1e-2 * scale / float(walk[k].abs().max()),
                     what=f"perturbation at step {k}")


def test_noise_ar1_correlates_successive_draws():
    system = LinearRelaxation(n=8)
    model = exact_closure(system)  # deterministic sampler: the closure is a smooth map of the noise

    def lag1(rho):
        res = ensemble(system, model, system.initial_state(1)[0], 6, members=32, seed=0, between=NoiseAR1(rho))
        u = torch.stack([res.closures[k] for k in range(6)])
        a, b = u[:-1] - u[:-1].mean(1, keepdim=True), u[1:] - u[1:].mean(1, keepdim=True)
        return float((a * b).sum() / (a.pow(2).sum() * b.pow(2).sum()).sqrt())

    # the flow map of a Gaussian law is linear: the closures inherit the noise correlation
    assert lag1(0.9) == pytest.approx(0.9, abs=0.1)  # abs-tol: a correlation in [-1, 1], statistical
    assert abs(lag1(0.0)) < 0.15


def test_deterministic_closure_does_not_depend_on_the_seed(small):
    system, model, v0 = small
    a = ensemble(system, model, v0, 3, members=3, seed=0, deterministic=4, deterministic_seed=1)
    assert float(a.spread.abs().max()) <= 1e-6 * float(a.states.abs().max())  # equal states -> equal closures
    b = ensemble(system, model, v0, 3, members=3, seed=5, deterministic=4, deterministic_seed=1)
    assert_close(a.states, b.states, rtol=1e-6, what="deterministic closure: another rollout seed")
    c = ensemble(system, model, v0, 3, members=3, seed=0)
    assert float(c.spread[-1].abs().max()) > 1e-3


def test_no_closure_baseline_and_initial_perturbation(small):
    system, model, v0 = small
    res = ensemble(system, None, v0, 3, members=2, seed=0)
    s = v0[None]
    for _ in range(3):
        s = system.step(s, None)
    assert torch.equal(res.final, s.expand(2, 1, 8, 8)) and not res.closures
    p = ensemble(system, None, v0, 0, members=400, seed=0, init_perturbation=0.5)
    assert p.spread[0].mean() == pytest.approx(0.5, rel=0.1)


def test_callable_closure_observations_and_history(small):
    system, _, v0 = small
    seen = []
    ref = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pts = regular_points(4)
    obs = StreamedObservations.from_reference(ref[:, None], pts)  # (steps, 1, c, P)
    assert obs.values.shape == (5, 1, 1, 16)
    assert torch.equal(obs.values[2, 0, 0, 5], ref[2, 0, 2, 2])  # point (1/4, 1/4) -> index (2, 2) at n=8

    def make_condition(state, history, o):
        seen.append((state.shape, None if history is None else history.shape, o.values.shape))
        return sc.Conditioning(fields=state, history=history, obs_values=o.values, obs_points=o.points)

    def baseline(c):  # a deterministic closure from the sparse values
        return c.obs_values.mean(-1)[..., None, None].expand_as(c.fields)

    res = rollout(system, baseline, v0, 5, members=3, observations=obs, make_condition=make_condition, history=2)
    assert seen[0] == (torch.Size([3, 1, 8, 8]), None, torch.Size([3, 1, 16]))
    assert seen[2] == (torch.Size([3, 1, 8, 8]), torch.Size([3, 2, 1, 8, 8]), torch.Size([3, 1, 16]))
    assert_close(res.closures[1][0, 0, 0, 0], ref[1, 0, ::2, ::2].mean(), rtol=1e-6, what="mean of the observations")
    with pytest.raises(ShapeError, match="observations"):
        rollout(system, baseline, v0, 6, observations=obs, make_condition=make_condition)


def test_errors_name_the_argument(small):
    system, model, v0 = small
    with pytest.raises(ConfigError, match="'n_steps'"):
        rollout(system, model, v0, -1)
    with pytest.raises(ConfigError, match="'between'"):
        rollout(system, model, v0, 2, between="ar1")
    with pytest.raises(ConfigError, match="'resample_every'"):
        rollout(system, model, v0, 2, resample_every=0)
    with pytest.raises(ShapeError, match="'state0'"):
        rollout(system, model, v0[0, 0], 2)
    with pytest.raises(ConfigError, match="'phi'"):
        ClosureAR1(phi=1.5)
    with pytest.raises(ConfigError, match="'members'"):
        rollout(system, model, v0, 2, members=0)


# -- results ------------------------------------------------------------------------------------------------
def test_rollout_result_views_and_exports(small):
    system, model, v0 = small
    res = ensemble(system, model, v0, 6, members=4, seed=0, record_every=2, progress=True)
    assert res.dims == ("time", "members", "channel", "y", "x")
    assert res.steps.tolist() == [0, 2, 4, 6]
    assert_close(res.times, 0.01 * res.steps.double(), rtol=1e-12, what="times")
    assert res.members.shape == (4, 4, 1, 8, 8) and res.mean.shape == (4, 1, 8, 8)
    assert_close(res.spread, res.states.std(1), rtol=1e-6, what="spread vs std over members")
    assert res.step_seconds.shape == (6,) and res.seconds > 0 and res.n_members == 4
    assert sorted(res.sites("closure/")) == [f"closure/{k}" for k in range(6)]
    arrays = res.to_numpy()
    assert arrays["states"].shape == (4, 4, 1, 8, 8) and arrays["dims"] == res.dims
    xr = pytest.importorskip("xarray")
    ds = res.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert ds["state"].dims == res.dims and ds["spread"].dims == ("time", "channel", "y", "x")
    assert float(ds["x"][1]) == pytest.approx(1 / 8)
    single = rollout(system, model, v0, 2)
    with pytest.raises(ShapeError, match="member_dim"):
        _ = single.mean


# -- statistics ---------------------------------------------------------------------------------------------
def test_exact_closure_ensemble_is_calibrated():
    """Truth and members are exchangeable realisations: flat ranks and spread-skill ~ 1.

    Verification uses 400 independent cases x 2 far-apart points at the final step: 800 nearly
    independent ranks in 20 bins (the chi-square test assumes independence).
    """
    system = LinearRelaxation(n=16, spatial_dims=1, gamma=1.0, dt=0.01)
    model = exact_closure(system, {"type": "probability_flow_heun", "steps": 30})
    cases, members, steps = 400, 19, 10
    v0 = system.initial_state(cases, generator=torch.Generator().manual_seed(0))
    truth, _ = reference_run(system, v0, steps, torch.Generator().manual_seed(1))
    res = ensemble(system, model, v0, steps, members=members, seed=2)
    ens = res.members[-1][..., 0, [0, 8]]  # (members, cases, points)
    obs = truth[-1][..., 0, [0, 8]]
    counts = metrics.rank_histogram(ens, obs)
    stat, p = metrics.rank_histogram_chi2(counts)
    ratio = float(metrics.spread_skill_ratio(res.members[-1], truth[-1]))
    assert p > 0.01, (counts.tolist(), stat)
    assert 0.8 <= ratio <= 1.2
    # a miscalibrated closure (spread halved) fails the same test
    half = sc.ClosureModel("vp", model.score, model.sampler, target_mean=model.target_mean,
                           target_std=model.target_std / 2)
    bad = ensemble(system, half, v0, steps, members=members, seed=2)
    _, p_bad = metrics.rank_histogram_chi2(metrics.rank_histogram(bad.members[-1][..., 0, [0, 8]], obs))
    assert p_bad < 1e-6 and float(metrics.spread_skill_ratio(bad.members[-1], truth[-1])) < 0.8


def test_tutorial_sized_ensemble_writes_the_plots(tmp_path):
    """16 members at 32^2 with the analytic closure, scored and plotted."""
    system = LinearRelaxation(n=32)
    model = exact_closure(system, {"type": "probability_flow_heun", "steps": 10})
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    truth, _ = reference_run(system, v0[None], 20, torch.Generator().manual_seed(1))
    res = ensemble(system, model, v0, 20, members=16, seed=0, resample_every=2)
    assert res.members.shape == (21, 16, 1, 32, 32)
    paths = plots.rollout_report(res, truth[:, 0], tmp_path, vorticity=False)
    for p in paths.values():
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    crps = metrics.crps_ensemble(res.members[-1], truth[-1, 0].expand(1, 32, 32), member_dim=0).mean()
    assert math.isfinite(float(crps))


@pytest.mark.parametrize("which", ["G", "H"])
def test_condition_with_true_navier_stokes_closures_reproduces_the_full_solver(which):
    ns_mod = pytest.importorskip("stochclosure.systems.navier_stokes")
    system = ns_mod.NavierStokes2D(n=32, closure=which)
    w0 = system.initial_state(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    truth, closures = [w0], {}
    w = w0
    for s in range(5):
        w, clo = system.full_step_with_closures(w, generator=gen)
        truth.append(w)
        closures[f"closure/{s}"] = clo[which]
    model = sc.ClosureModel("vp", GaussianScore("vp", std=1.0), {"type": "euler_maruyama", "steps": 2})
    res = poutine.condition(rollout, data=closures)(system, model, w0, 5, members=3)
    ref = torch.stack(truth)[:, None].expand_as(res.states)
    # the reduced step with the true closure re-associates a few floating-point sums (float64)
    assert torch.allclose(res.states, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


def test_condition_with_true_lorenz96_closures_reproduces_the_full_model():
    """Injecting the step-consistent closures U_step of a full two-scale run at every step
    reproduces the slow variables X of that run (float64 round-off)."""
    from stochclosure.systems.lorenz96 import Lorenz96

    system = Lorenz96(dt=5e-3)
    x, y = system.full_initial_state(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(200):  # leave the initial transient
        x, y = system.full_step(x, y)
    x0, truth, closures = x, [x], {}
    for s in range(20):
        xn, y = system.full_step(x, y)
        closures[f"closure/{s}"] = system.step_closure(x, xn)
        truth.append(xn)
        x = xn
    model = sc.ClosureModel("vp", GaussianScore("vp", std=1.0), {"type": "euler_maruyama", "steps": 2})
    res = poutine.condition(rollout, data=closures)(system, model, x0, 20, members=3)
    ref = torch.stack(truth)[:, None].expand_as(res.states)
    assert torch.allclose(res.states, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    free = rollout(system, None, x0, 20)  # the no-closure baseline drifts away
    assert float((free.states[-1] - truth[-1]).abs().max()) > 1e-3
