"""Resampling policies between closure draws: WarmStart (SDEdit refresh) and ClosureAR1.fit."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

import stochclosure as sc
from stochclosure.errors import ConfigError
from stochclosure.rollouts import ClosureAR1, Hold, NoiseAR1, WarmStart, ensemble, rollout
from stochclosure.rollouts.policies import isotropic_spectrum
from stochclosure.scores.analytic import GaussianScore
from stochclosure.systems import LinearRelaxation
from stochclosure.testing import assert_close


def exact_closure(system: LinearRelaxation, sampler: dict) -> sc.ClosureModel:
    """The system's exact closure law as a ClosureModel (as in test_rollout)."""
    law = system.closure_law()
    grf = dict(law["grf"])
    std = math.sqrt(float(system.noise_cov.variance().mean()) / system.dt)
    grf["scale"] = grf["scale"] / std**2
    return sc.ClosureModel("vp", GaussianScore("vp", mean=0.0, grf=grf), sampler,
                           target_mean=torch.tensor([float(law["mean"])]), target_std=torch.tensor([std]))


@pytest.fixture(scope="module")
def small():
    system = LinearRelaxation(n=8, forcing_mean=0.3)
    model = exact_closure(system, {"type": "dpm_solver_pp_2m", "steps": 8})
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    return system, model, v0


def _draw_sites(trace):
    return {k: v["value"] for k, v in trace.nodes.items() if k.startswith("closure/")}


def test_warm_start_shapes_and_determinism(small):
    system, model, v0 = small
    kw = dict(resample_every=3, between=WarmStart(t_start=0.3, steps=2))
    a = ensemble(system, model, v0, 9, members=4, seed=5, **kw)
    b = ensemble(system, model, v0, 9, members=4, seed=5, **kw)
    c = ensemble(system, model, v0, 9, members=4, seed=6, **kw)
    assert a.members.shape == (10, 4, *v0.shape)
    assert sorted(a.closures) == [0, 3, 6]
    assert all(u.shape == (4, *v0.shape) for u in a.closures.values())
    assert torch.equal(a.states, b.states)
    assert not torch.equal(a.states, c.states)
    tr = poutine.trace(rollout).get_trace(system, model, v0, 6, members=2, **kw)
    again = poutine.replay(rollout, trace=tr)(system, model, v0, 6, members=2, **kw)
    assert torch.equal(again.final, tr.nodes["state/6"]["value"])


def test_warm_start_at_T_is_a_full_draw(small):
    system, model, v0 = small
    full = poutine.trace(ensemble).get_trace(system, model, v0, 6, members=3, seed=1, resample_every=2)
    warm = poutine.trace(ensemble).get_trace(system, model, v0, 6, members=3, seed=1, resample_every=2,
                                             between=WarmStart(t_start=model.sde.T, steps=5))
    f, w = _draw_sites(full), _draw_sites(warm)
    assert sorted(f) == sorted(w) == ["closure/0", "closure/2", "closure/4"]
    for k in f:
        assert torch.equal(f[k], w[k]), k


def test_warm_start_keeps_the_closure_law_and_stays_near_the_previous_draw():
    """From an exact draw, noising to t_start and an exact reverse solve gives the law again (SDEdit
    leaves the target law invariant), and small t_start keeps the draw near the previous one."""
    model = sc.ClosureModel("vp", GaussianScore("vp", mean=0.5, std=0.7), {"type": "euler_maruyama", "steps": 200})
    n, grid = 4000, (2, 2)
    gen = torch.Generator().manual_seed(0)
    prev = (0.5 + 0.7 * torch.randn(n, 1, *grid, generator=gen))
    cond = sc.Conditioning()
    for t_start, max_move in ((0.3, None), (0.05, 0.45)):
        law = sc.ClosureDistribution(model, cond, batch_shape=(n,), grid=grid, warm_start=prev,
                                     sampler=WarmStart(t_start, 100).sampler_for(model),
                                     generator=torch.Generator().manual_seed(1))
        new = law.sample()
        assert abs(float(new.mean()) - 0.5) < 0.02, t_start
        assert abs(float(new.std()) / 0.7 - 1) < 0.03, t_start
        move = float((new - prev).pow(2).mean().sqrt()) / 0.7
        if max_move is not None:
            assert move < max_move
        else:
            assert move > 0.5  # t = 0.3 of the VP SDE: most of the sample is re-drawn


def test_warm_start_options_validated(small):
    system, model, v0 = small
    with pytest.raises(ConfigError, match="t_start"):
        WarmStart(t_start=0.0)
    with pytest.raises(ConfigError, match="steps"):
        WarmStart(0.2, steps=0)
    pc = sc.ClosureModel("vp", model.score, {"type": "torchsde"} if "torchsde" in sc.available("sampler")
                         else "euler_maruyama", target_mean=model.target_mean, target_std=model.target_std)
    if "torchsde" in sc.available("sampler"):
        with pytest.raises(ConfigError, match="t_start"):
            rollout(system, pc, v0, 3, members=2, resample_every=1, between=WarmStart(0.2))


def test_closure_ar1_fit_recovers_phi_and_sigma_on_synthetic_ar1():
    gen = torch.Generator().manual_seed(0)
    phi, std, n_t = 0.9, 2.0, 4000
    x = torch.zeros(n_t, 3, 1, 8)
    x[0] = std * torch.randn(3, 1, 8, generator=gen)
    for i in range(1, n_t):
        x[i] = phi * x[i - 1] + std * math.sqrt(1 - phi**2) * torch.randn(3, 1, 8, generator=gen)
    fit = ClosureAR1.fit(x + 5.0, dt=0.1)
    assert abs(fit.phi - phi) < 0.01
    assert abs(fit.sigma - std * math.sqrt(1 - phi**2)) < 0.05
    assert fit.decorrelation_time(0.1) == pytest.approx(-0.1 / math.log(fit.phi))
    finer = ClosureAR1.fit(x, dt=0.1, step_dt=0.025)  # four solver steps per record
    assert finer.phi == pytest.approx(fit.phi ** 0.25)
    assert finer.decorrelation_time(0.025) == pytest.approx(fit.decorrelation_time(0.1))
    with pytest.raises(sc.ShapeError):
        ClosureAR1.fit(x[:2], dt=0.1)


def test_hold_and_fitted_ar1_in_a_rollout(small):
    system, model, v0 = small
    u = torch.randn(50, 2, 1, 8, generator=torch.Generator().manual_seed(3)).cumsum(0) * 0.1
    ar = ClosureAR1.fit(u, dt=system.dt)
    res = ensemble(system, model, v0, 8, members=2, seed=0, resample_every=4, between=ar)
    held = ensemble(system, model, v0, 8, members=2, seed=0, resample_every=4, between=Hold())
    assert sorted(res.closures) == sorted(held.closures) == [0, 4]
    assert torch.equal(res.closures[0], held.closures[0])
    assert not torch.equal(res.final, held.final)


# -- ClosureAR1 as a process over the whole run ------------------------------------------------------------------
class Echo:
    """A 'solver' whose next state is the closure it was given: the states record the closures used."""

    spatial_dims = 2
    dt = 1.0

    def step(self, state, closure_term, dt=None):
        return closure_term.clone()


def _zero(cond):
    return torch.zeros_like(cond.fields)


def _perturbations(policy, steps=300, members=64, n=8, seed=0):
    res = ensemble(Echo(), _zero, torch.zeros(1, n, n), steps, members, seed=seed, between=policy, resample_every=7)
    return res.states[1:].double()  # (steps, members, 1, n, n): e_0 .. e_{steps-1}


def test_closure_ar1_has_the_stationary_variance_and_lag1_correlation_of_its_theory():
    # 64 members x 64 points x 300 steps; independent points, effective sample ~ N (1 - phi^2) / (1 + phi^2)
    # ~ 2.7e5 for the variance: its relative standard error is ~0.3 %, so 3 % is a > 9-sigma bound; the
    # lag-1 correlation's standard error is ~(1 - phi^2) / sqrt(N) ~ 3e-4 (3 % of 0.8 is > 50 sigma).
    policy = ClosureAR1(phi=0.8, sigma=0.3)
    e = _perturbations(policy)
    var = float(e.pow(2).mean())
    lag1 = float((e[1:] * e[:-1]).mean() / e.pow(2).mean())
    assert_close(torch.tensor(var), torch.tensor(policy.stationary_std**2), rtol=0.03, what="stationary variance")
    assert_close(torch.tensor(lag1), torch.tensor(0.8), rtol=0.03, what="lag-1 correlation")
    # no reset at the fresh draws (every 7 steps): the correlation across a draw is the same phi
    across = float((e[7::7][:-1] * e[6::7][:len(e[7::7]) - 1]).mean() / e.pow(2).mean())
    assert_close(torch.tensor(across), torch.tensor(0.8), rtol=0.05, what="lag-1 correlation across a fresh draw")


def test_coloured_closure_ar1_keeps_the_variance_and_takes_the_spectrum():
    spectrum = (0.0, 4.0, 2.0, 1.0, 0.5, 0.0)
    policy = ClosureAR1(phi=0.5, sigma=0.2, spectrum=spectrum)
    e = _perturbations(policy, steps=120)
    assert_close(torch.tensor(float(e.pow(2).mean())), torch.tensor(policy.stationary_std**2), rtol=0.05,
                 what="pointwise variance of coloured innovations")
    got = isotropic_spectrum(e, 2)[:len(spectrum)]
    want = torch.tensor(spectrum, dtype=torch.float64)
    assert_close(got / got.sum(), want / want.sum(), rtol=0.05, what="shell power of the perturbation (normalised)")


def test_closure_ar1_fit_recovers_phi_and_the_spectrum():
    spectrum = (0.0, 3.0, 1.0, 0.3)
    truth = ClosureAR1(phi=0.9, sigma=0.1, spectrum=spectrum)
    series = _perturbations(truth, steps=400, members=16, seed=3)
    fitted = ClosureAR1.fit(series, dt=1.0)
    assert_close(torch.tensor(fitted.phi), torch.tensor(0.9), rtol=0.02, what="fitted phi")
    assert_close(torch.tensor(fitted.stationary_std), torch.tensor(truth.stationary_std), rtol=0.05,
                 what="fitted stationary std")
    got = torch.tensor(fitted.spectrum[:4])
    want = torch.tensor(spectrum)
    assert_close(got / got.sum(), want / want.sum(), rtol=0.1, what="fitted shell power (normalised)")
    half = ClosureAR1.fit(series, dt=1.0, step_dt=0.5)
    assert_close(torch.tensor(half.phi), torch.tensor(fitted.phi**0.5), rtol=1e-9, what="phi at half the step")


def test_noise_ar1_fit_from_a_memory():
    assert NoiseAR1.fit(memory=0.16, interval=0.02).rho == pytest.approx(math.exp(-0.125), rel=1e-12)
    tau = ClosureAR1(phi=0.9, sigma=0.1).decorrelation_time(0.01)
    assert NoiseAR1.fit(memory=tau, interval=0.01).rho == pytest.approx(0.9, rel=1e-12)
    with pytest.raises(ConfigError, match="memory"):
        NoiseAR1.fit(memory=0.0, interval=0.01)


def test_white_forcing_is_fresh_every_step_so_a_hold_adds_up_like_sqrt_k():
    # phi = 0: e_s independent with std sigma; the sum over a k-step hold has std sqrt(k) sigma (not k sigma).
    # 64 members x 64 points x 42 blocks: the block-sum variance has a relative standard error of ~0.9 %.
    policy = ClosureAR1.white_forcing(0.5)
    e = _perturbations(policy, steps=294)                  # 42 holds of 7 steps
    lag1 = float((e[1:] * e[:-1]).mean() / e.pow(2).mean())
    assert abs(lag1) < 0.02  # a correlation near 0: its standard error here is ~1e-3
    sums = e.reshape(42, 7, *e.shape[1:]).sum(1)
    assert_close(torch.tensor(float(sums.pow(2).mean())), torch.tensor(7 * 0.25), rtol=0.05,
                 what="variance of the forcing summed over a 7-step hold")
