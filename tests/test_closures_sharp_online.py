"""``benchmarks/closures_sharp.py``: the diffusion closure with time memory in its starting noise, and the fair energy score."""

from __future__ import annotations

import math

import torch
from benchmark_scripts import load_benchmark

import stochclosure as sc
from stochclosure.scores.analytic import GaussianScore
from stochclosure.testing import assert_close


def _module():
    return load_benchmark("closures_sharp.py", "closures_sharp_under_test")


class _Mean:
    """A learned-mean stand-in, ``mu(y) = 2 y``, counting its evaluations."""

    def __init__(self):
        self.calls = 0

    def mean(self, cond):
        self.calls += 1
        return 2 * cond.fields


class _Diffusion:
    """The attributes of ``closures.DiffusionResidual`` the online law reads."""

    def __init__(self, steps=6):
        self.model = sc.ClosureModel("vp", GaussianScore("vp", mean=0.0, std=1.0),
                                     {"type": "dpm_solver_pp_2m", "steps": steps})
        self.adm, self.sampler, self.steps = _Mean(), "dpm_solver_pp_2m", steps


def test_the_diffusion_remainder_is_a_function_of_its_starting_noise_and_mu_is_evaluated_once_per_step():
    mod = _module()
    d = _Diffusion()
    law = mod.DiffusionRemainderLaw(d, seed=0)
    assert law.nfe_per_draw == float(d.model.sampler.nfe(6))
    cond = sc.Conditioning(fields=torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a, b = law.residual.draw(cond, z), law.residual.draw(cond, z)
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)   # the same starting noise: the same draw
    ref = d.model.sample(sc.Conditioning(fields=torch.cat([cond.fields, 2 * cond.fields], 1)), 1,
                         x_init=(z * d.model.prior_std())[None])[0]
    assert torch.equal(a, ref)
    assert_close(law.physics.mean(cond), 2 * cond.fields, rtol=0, what="mu")
    assert d.adm.calls == 1  # one condition (one step): mu evaluated once for the draw and the mean
    law.physics.mean(sc.Conditioning(fields=cond.fields.clone()))
    assert d.adm.calls == 2  # a new state: evaluated again


def test_ar1_starting_noise_gives_draws_correlated_in_time():
    """Held draws through ``closures.drawer``: the correlation of consecutive remainders follows rho^hold.

    The analytic N(0, 1) score makes DPM-Solver++ map the starting noise almost linearly to the draw, so
    the lag-one correlation of the draws is close to the latent's ``rho^hold`` (0.81 here; tolerance 0.05
    for 2048 pixels x 20 pairs), and near zero with ``rho = 0``.
    """
    mod = _module()
    study = load_benchmark("closures.py", "closures_study_for_sharp")
    w = torch.zeros(2, 1, 32, 32)
    for rho, want in ((0.9, 0.81), (0.0, 0.0)):
        law, gen, memory = mod.DiffusionRemainderLaw(_Diffusion(), seed=0), torch.Generator().manual_seed(3), {}
        call = study.drawer(law, rho, hold=2)
        draws = [call(w, gen, memory) for _ in range(42)][::2]   # a draw every second call
        r = torch.stack(draws).double()
        corr = float((r[1:] * r[:-1]).mean() / (r[1:].pow(2).mean() * r[:-1].pow(2).mean()).sqrt())
        assert abs(corr - want) < 0.05, (rho, corr)


def test_fair_energy_score_matches_its_definition():
    mod = _module()
    gen = torch.Generator().manual_seed(0)
    ens, ref = torch.randn(5, 3, 1, 4, 4, generator=gen).double(), torch.randn(3, 1, 4, 4, generator=gen).double()
    es = mod.fair_energy(ens, ref)
    x, y = ens.flatten(2), ref.flatten(1)
    for c in range(3):
        pair = sum(float((x[i, c] - x[j, c]).norm()) for i in range(5) for j in range(5) if i != j)
        want = float((x[:, c] - y[c]).norm(dim=-1).mean()) - pair / (2 * 5 * 4)
        assert math.isclose(float(es[c]), want, rel_tol=1e-10)
    assert_close(mod.fair_energy(ens[:1], ref), (ens[0] - ref).flatten(1).norm(dim=1), rtol=1e-12,
                 what="one member: the L2 error")


class _UnitGaussianLaw:
    """A law with mean 0 and spread 1 everywhere (``mean`` and ``residual.std``, as the Gaussian residual law)."""

    def __init__(self):
        self.residual = self

    def mean(self, cond):
        return torch.zeros_like(cond.fields)

    def std(self, cond):
        return torch.ones_like(cond.fields)


def test_gaussianity_reads_zero_shape_for_gaussian_data_and_the_tails_of_laplace_data():
    from types import SimpleNamespace

    mod = _module()
    study = SimpleNamespace(flat=lambda x: x.flatten(0, 1))
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(6, 4, 1, 32, 32)
    g = mod.gaussianity(study, _UnitGaussianLaw(), w, torch.randn(w.shape, generator=gen))
    # 24576 points: the SE of the excess kurtosis is ~sqrt(24 / n) = 0.03 and of the skewness ~0.016
    assert abs(g["z"]["excess_kurtosis"][0]) < 0.12 and abs(g["z"]["skewness"][0]) < 0.06
    assert abs(g["z"]["coverage_80"][0] - 0.8) < 0.015 and abs(g["z"]["std"][0] - 1) < 0.02
    laplace = torch.distributions.Laplace(0.0, 1.0).sample(w.shape)  # excess kurtosis 3, std sqrt(2)
    g = mod.gaussianity(study, _UnitGaussianLaw(), w, laplace)
    assert 2.4 < g["z"]["excess_kurtosis"][0] < 3.6 and abs(g["z"]["std"][0] - math.sqrt(2)) < 0.05
    assert g["points"] == w.numel()


def _gap_by_closed_form(nu, s):
    """Percent by which N(0, s^2)'s expected CRPS exceeds the exact law's, for a unit-variance Student-t(nu) truth."""
    from scipy import integrate, stats

    scale = math.sqrt((nu - 2) / nu)

    def pdf(y):
        return stats.t.pdf(y / scale, nu) / scale

    def gauss_crps(y):  # Gneiting & Raftery's closed form for N(0, s^2)
        x = y / s
        return s * (x * (2 * stats.norm.cdf(x) - 1) + 2 * stats.norm.pdf(x) - 1 / math.sqrt(math.pi))

    exact = integrate.quad(lambda y: stats.t.cdf(y / scale, nu) * stats.t.sf(y / scale, nu), -80, 80, limit=400)[0]
    gauss = integrate.quad(lambda y: gauss_crps(y) * pdf(y), -80, 80, limit=400)[0]
    return 100 * (gauss - exact) / exact


def test_gaussian_crps_gap_matches_the_closed_form_gaussian_crps_integrated_against_the_heavy_tailed_law():
    mod = _module()
    assert mod.gaussian_crps_gap(0.0)["gap_percent"] == 0.0
    gaps = [mod.gaussian_crps_gap(k) for k in (0.5, 1.0, 3.0)]
    assert gaps[0]["gap_percent"] < gaps[1]["gap_percent"] < gaps[2]["gap_percent"]
    for got in gaps:
        expected = _gap_by_closed_form(got["nu"], got["best_sigma"])
        assert_close(torch.tensor(expected), torch.tensor(got["gap_percent"]), rtol=1e-3)
