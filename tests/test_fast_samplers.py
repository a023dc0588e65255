"""EDM Heun, DPM-Solver++(2M) and the path-consistent Brownian noise source.

Tolerances (fixed seeds):
* convergence orders use the exact probability-flow solution for a Gaussian target
  ``N(m, s^2)``: in ``y = x / alpha_t`` with noise level ``l_t = sigma_t / alpha_t``,
  ``y(l) = m + (y_T - m) sqrt((s^2 + l^2) / (s^2 + l_T^2))``; the fitted slope of log error vs
  log steps must lie in (-2.3, -1.7) (second order, no Monte Carlo noise);
* field targets (256, 1, 32, 32): per-mode variance averaged over the significant modes within
  6 % of exact (Monte Carlo about 2 %), mean within 0.03;
* Brownian paths agree across grids to 1e-5 (float32 sums of up to 40 increments);
* member independence: |corr| < 4.5 / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import stochclosure as sc
from stochclosure.samplers import BrownianNoise, DPMSolverPP2M, EDMHeun, EulerMaruyama, GaussianNoise, grids
from stochclosure.scores import GaussianScore
from stochclosure.testing import assert_close, check_sampler


def _exact_flow(sde, x_T, m, s, t_end):
    """Exact probability-flow ODE solution from ``sde.T`` to ``t_end`` for the law N(m, s^2)."""
    def coef(t):
        a, sig = sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64))
        return float(a), float(sig / a)

    a_T, l_T = coef(sde.T)
    a_e, l_e = coef(t_end)
    return a_e * (m + (x_T / a_T - m) * math.sqrt((s**2 + l_e**2) / (s**2 + l_T**2)))


def _slope(sampler, sde_name, steps):
    sde = sc.resolve("sde", sde_name)
    op = GaussianScore(sde, mean=0.5, std=0.8)
    x0 = sde.prior_sample((64, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _exact_flow(sde, x0, 0.5, 0.8, sde.eps)
    errs = [(sampler.sample(lambda x, t: op(x, t), sde, (64, 1), steps=n, x_init=x0, dtype=torch.float64) - ref)
            .abs().max().item() for n in steps]
    return np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("sde_name", ["ve", "ve_exp", "vp", "subvp"])
def test_edm_heun_is_second_order(sde_name):
    slope, errs = _slope(EDMHeun(denoise=False), sde_name, [8, 16, 32, 64])
    assert -2.3 < slope < -1.7, (slope, errs)


@pytest.mark.parametrize("sde_name", ["ve", "ve_exp", "vp", "subvp"])
@pytest.mark.parametrize("grid", ["log_snr", "karras_sigma"])
def test_dpm_solver_pp_2m_is_second_order(sde_name, grid):
    # The asymptotic regime of the multistep rule starts around 30 steps for these targets.
    slope, errs = _slope(DPMSolverPP2M(denoise=False, grid=grid), sde_name, [32, 64, 128, 256])
    assert -2.3 < slope < -1.7, (slope, errs)


def test_dpm_solver_first_order_variant_is_first_order_only_at_the_last_step():
    """lower_order_final=False keeps the multistep correction to the end; both stay accurate."""
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=0.5, std=0.8)
    x0 = sde.prior_sample((64, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _exact_flow(sde, x0, 0.5, 0.8, sde.eps)
    for lof in (True, False):
        out = DPMSolverPP2M(steps=64, denoise=False, lower_order_final=lof).sample(
            lambda x, t: op(x, t), sde, (64, 1), x_init=x0, dtype=torch.float64)
        assert (out - ref).abs().max() < 3.6e-3 * ref.abs().max()  # |x| <= 2.76; measured 1.3e-3 of it


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
# The spectral field spans two decades of mode variance; 30 steps bring the deterministic
# samplers within 3 % (exact, see benchmarks/samplers.py), churn needs a few more.
@pytest.mark.parametrize("sampler", [EDMHeun(steps=30), DPMSolverPP2M(steps=30), EDMHeun(steps=40, s_churn=5.0)],
                         ids=["edm", "dpm2m", "edm_churn"])
def test_fast_samplers_reproduce_a_spectral_field_law(sde_name, sampler):
    sde = sc.resolve("sde", sde_name)
    op = GaussianScore(sde, mean=0.3, grf={"alpha": 2.0, "tau": 3.0, "scale": 400.0})
    cov = op.covariance((1, 32, 32))
    x = sampler.sample(lambda x, t: op(x, t), sde, (256, 1, 32, 32), generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    assert abs(x.mean().item() - 0.3) < 0.03
    emp = (torch.fft.rfftn(x - 0.3, dim=(-2, -1), norm="ortho").abs() ** 2).mean(dim=(0, 1))
    exact = cov.mode_variances()
    sig = exact > 1e-2 * exact.max()
    assert abs((emp[sig] / exact[sig]).mean().item() - 1) < 0.06


@pytest.mark.parametrize("sampler", [EDMHeun(), EDMHeun(s_churn=5.0, steps=10), DPMSolverPP2M()],
                         ids=["edm", "edm_churn", "dpm2m"])
def test_contract(sampler):
    check_sampler(sampler)


def test_nfe_and_callback():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde)
    for sampler, want in ((EDMHeun(steps=5), 11), (DPMSolverPP2M(steps=6), 7), (DPMSolverPP2M(steps=6, denoise=False), 6)):
        seen = []
        sampler.sample(lambda x, t: op(x, t), sde, (2, 3), callback=seen.append)
        assert sampler.nfe() == want and len(seen) == sampler.steps
        assert seen[-1].nfe == want - int(sampler.denoise) and seen[0].t > seen[0].t_next


def test_brownian_noise_gives_one_path_for_any_grid():
    sde = sc.resolve("sde", "vp")
    like = torch.zeros(3, 2, 5)
    paths = []
    for n in (10, 20, 40):
        noise = BrownianNoise(seed=7, t_max=sde.T)
        ts = grids.uniform(sde, sde.T, sde.eps, n).tolist()
        w = torch.stack([noise.increment(ts[i], ts[i + 1], like) for i in range(n)]).cumsum(0)
        paths.append(w[n // 10 - 1 :: n // 10])  # W at the 10 coarse grid points
    assert_close(paths[1], paths[0], rtol=1e-5, what="W on a 2x finer grid")
    assert_close(paths[2], paths[0], rtol=1e-5, what="W on a 4x finer grid")
    # ... and on a non-nested (Karras) grid the endpoint increment is the same too
    ts = grids.karras(sde, sde.T, sde.eps, 13).tolist()
    noise = BrownianNoise(seed=7, t_max=sde.T)
    total = sum(noise.increment(ts[i], ts[i + 1], like) for i in range(13))
    assert_close(total, paths[0][-1], rtol=1e-5, what="W(T) on a Karras grid")


def test_brownian_noise_members_reproducible_and_independent():
    like = torch.zeros(64, 400)
    a = BrownianNoise(seed=3).increment(1.0, 0.0, like)
    small = BrownianNoise(seed=3).increment(1.0, 0.0, like[:5])
    assert torch.equal(a[:5], small)  # member i's path depends on (seed, i) only
    assert not torch.equal(a, BrownianNoise(seed=4).increment(1.0, 0.0, like))
    assert abs(a.var().item() - 1.0) < 0.05  # Var W(1) - W(0) = 1; 25600 draws
    r = np.corrcoef(a.numpy())[~np.eye(64, dtype=bool)]
    assert np.abs(r).max() < 4.5 / math.sqrt(400)


def test_path_consistent_euler_maruyama_converges_strongly():
    """With one Brownian path, EM at n steps approaches EM at 256 steps; with fresh noise it cannot."""
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=0.5, std=0.8)
    x0 = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(n, noise):
        return EulerMaruyama(steps=n, denoise=False).sample(lambda x, t: op(x, t), sde, (4, 2), x_init=x0,
                                                             noise=noise, dtype=torch.float64)

    ref = run(256, BrownianNoise(seed=1))
    errs = [(run(n, BrownianNoise(seed=1)) - ref).abs().max().item() for n in (8, 32)]
    fresh = (run(32, GaussianNoise(torch.Generator().manual_seed(1))) - ref).abs().max().item()
    assert errs[1] < errs[0] / 2, errs  # strong convergence along one path
    assert errs[1] < fresh / 5, (errs, fresh)


def test_churn_is_reproducible_with_brownian_noise():
    sde = sc.resolve("sde", "ve")
    op = GaussianScore(sde, std=0.5)
    sampler = EDMHeun(steps=8, s_churn=4.0)
    a, b = (sampler.sample(lambda x, t: op(x, t), sde, (4, 3), noise=BrownianNoise(seed=2, t_max=sde.T),
                           generator=torch.Generator().manual_seed(0)) for _ in range(2))
    c = sampler.sample(lambda x, t: op(x, t), sde, (4, 3), noise=BrownianNoise(seed=3, t_max=sde.T),
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_arguments():
    with pytest.raises(sc.ConfigError, match="'s_churn'"):
        EDMHeun(s_churn=-1.0)
    with pytest.raises(sc.ConfigError, match="'s_noise'"):
        EDMHeun(s_noise=0.0)
    with pytest.raises(sc.ConfigError, match="'grid'"):
        DPMSolverPP2M(grid="cosine")
    with pytest.raises(sc.ConfigError, match="'seed'.*either"):
        BrownianNoise(seed=1, generator=torch.Generator())
    with pytest.raises(sc.ConfigError, match="'t0/t1'.*t_max"):
        BrownianNoise(seed=1, t_max=1.0).increment(2.0, 1.0, torch.zeros(1, 2))
    noise = BrownianNoise(seed=1)
    noise.increment(1.0, 0.5, torch.zeros(2, 3))
    with pytest.raises(sc.ShapeError, match="'like'"):
        noise.increment(0.5, 0.2, torch.zeros(2, 4))
