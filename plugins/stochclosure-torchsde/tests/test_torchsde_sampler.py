"""The torchsde sampler samples exact Gaussian targets and agrees with the core Euler–Maruyama loop.

Tolerances (fixed seeds):
* vector target N(m, C) in 3-D under VP, 4000 samples, 50 steps (2-evaluation methods) or 100
  (1-evaluation methods): |mean - m| < 0.06 per coordinate (about 3 Monte Carlo standard
  errors of the widest coordinate), relative Frobenius error of the sample covariance < 0.08
  (Monte Carlo alone about 0.035, the weak-order-1 bias of 100 Euler steps about 0.02), KS
  p-value > 1e-3 per whitened marginal;
* pathwise agreement with the core loop driven by the same Brownian motion: 1e-7 in float64
  (the same recursion; the plugin's steps are 1e-9 longer, see ``TorchSDESampler.sample``, which
  moves the result by about 3e-9 for the research VE SDE, whose g(T) is 26);
* member independence: |corr| < 4.5 / sqrt(512) for outputs of members that share a start.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torchsde
from stochclosure_torchsde import METHODS, MemberBrownian, ReverseTimeSDE, TorchSDESampler, member_entropies

import stochclosure as sc
from stochclosure.samplers import EulerMaruyama, NoiseSource
from stochclosure.scores import GaussianScore
from stochclosure.testing import assert_close, check_sampler

DENSE_COV = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.5, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64)
DENSE_MEAN = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)


def _check_vector_law(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
    assert np.abs(x.mean(0) - mean).max() < 0.06
    emp = np.cov(x.T)
    assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < 0.08
    w = np.linalg.solve(np.linalg.cholesky(cov), (x - mean).T).T
    for j in range(3):
        assert scipy.stats.kstest(w[:, j], "norm").pvalue > 1e-3


def test_resolvable_by_name_and_passes_contract():
    sampler = sc.resolve("sampler", {"type": "torchsde", "per_member_noise": False})
    assert isinstance(sampler, TorchSDESampler)
    check_sampler(sampler, steps=100)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_samples_the_vector_gaussian(method):
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=DENSE_MEAN, covariance=DENSE_COV)
    steps = 50 if METHODS[method].nfe_per_step == 2 else 100
    sampler = TorchSDESampler(method, steps=steps, per_member_noise=False)
    x = sampler.sample(lambda x, t: op(x, t), sde, (4000, 3), generator=torch.Generator().manual_seed(11),
                       dtype=torch.float64)
    assert sampler.last_nfe == sampler.nfe(steps)
    _check_vector_law(x.numpy(), DENSE_MEAN.numpy(), DENSE_COV.numpy())


def test_probability_flow_ode_as_zero_noise_sde():
    sde = sc.resolve("sde", "subvp")
    op = GaussianScore(sde, mean=DENSE_MEAN, covariance=DENSE_COV)
    sampler = TorchSDESampler("midpoint", steps=40, ode=True, per_member_noise=False)
    x = sampler.sample(lambda x, t: op(x, t), sde, (4000, 3), generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64)
    _check_vector_law(x.numpy(), DENSE_MEAN.numpy(), DENSE_COV.numpy())


class _SharedBrownian(NoiseSource):
    """Core-sampler noise read from the torchsde Brownian motion at the plugin's reversed times."""

    def __init__(self, bm, t_start: float, span: float, steps: int):
        self.bm, self.t_start, self.span = bm, t_start, span
        self.dt = span / steps * (1.0 + 1e-9)  # the plugin's step (see TorchSDESampler.sample)
        self.k = 0

    def increment(self, t0, t1, like):
        s0, s1 = min(self.k * self.dt, self.span), min((self.k + 1) * self.dt, self.span)
        self.k += 1
        return self.bm(s0, s1).reshape(like.shape)


@pytest.mark.parametrize("sde_name", ["ve_exp", "vp"])
def test_euler_is_pathwise_the_core_euler_maruyama(sde_name):
    sde = sc.resolve("sde", sde_name)
    op = GaussianScore(sde, mean=0.2, std=0.5)
    shape, steps, seed = (5, 1, 4, 4), 50, 123
    x0 = sde.prior_sample(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    ours = TorchSDESampler("euler", steps=steps).sample(lambda x, t: op(x, t), sde, shape, generator=gen, x_init=x0,
                                                         dtype=torch.float64)
    # Rebuild the same per-member Brownian motion the sampler drew from its generator.
    bm_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    span = sde.T - sde.eps
    bm = MemberBrownian(0.0, span, 16, member_entropies(bm_seed, 5), dtype=torch.float64, dt=span / steps)
    core = EulerMaruyama(steps=steps).sample(lambda x, t: op(x, t), sde, shape, x_init=x0, dtype=torch.float64,
                                             noise=_SharedBrownian(bm, sde.T, span, steps))
    assert_close(ours, core, rtol=5e-8, what="torchsde euler vs core Euler-Maruyama on one path")


def test_agrees_in_distribution_with_core_euler_maruyama():
    sde = sc.resolve("sde", "ve")
    op = GaussianScore(sde, mean=0.1 * DENSE_MEAN, covariance=DENSE_COV)
    kw = dict(generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = TorchSDESampler("srk", steps=100, per_member_noise=False).sample(lambda x, t: op(x, t), sde, (4000, 3), **kw)
    b = EulerMaruyama(steps=200).sample(lambda x, t: op(x, t), sde, (4000, 3), generator=torch.Generator().manual_seed(5),
                                        dtype=torch.float64)
    for j in range(3):
        assert scipy.stats.ks_2samp(a[:, j].numpy(), b[:, j].numpy()).pvalue > 1e-3


def test_same_seed_same_samples_members_reproducible_and_independent():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, std=1.0)
    sampler = TorchSDESampler("euler", steps=40)
    x0 = torch.randn(1, 512, generator=torch.Generator().manual_seed(0)).expand(8, 512).clone()

    def run(batch, seed):
        return sampler.sample(lambda x, t: op(x, t), sde, (batch, 512), x_init=x0[:batch],
                              generator=torch.Generator().manual_seed(seed))

    a, b, c = run(8, 5), run(8, 5), run(8, 6)
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-5 * float(a.abs().max())
    assert torch.equal(run(3, 5), a[:3])  # a member's noise does not depend on the batch size
    r = np.corrcoef(a.numpy())
    off = r[~np.eye(8, dtype=bool)]
    assert np.abs(off).max() < 4.5 / math.sqrt(512), off  # same start, independent noise


def test_adaptive_stepping_reports_its_evaluations():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=DENSE_MEAN, covariance=DENSE_COV)
    sampler = TorchSDESampler("midpoint", adaptive=True, steps=20, rtol=1e-2, per_member_noise=False,
                              atol=1e-2)  # abs-tol: torchsde's step-size control, a solver option
    seen = []
    x = sampler.sample(lambda x, t: op(x, t), sde, (4000, 3), generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64, callback=seen.append)
    assert len(seen) == 1 and seen[0].nfe + 1 == sampler.last_nfe > 20
    _check_vector_law(x.numpy(), DENSE_MEAN.numpy(), DENSE_COV.numpy())
    with pytest.raises(sc.ConfigError, match="'adaptive'.*last_nfe"):
        sampler.nfe()


class _Shift(torch.nn.Module):
    """A Gaussian score with a learnable mean: score = -(x - alpha m) / (alpha^2 s^2 + sigma^2)."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.m = sde, torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x, t):
        a, s = self.sde.marginal_coefficients(t)
        a, s = a[:, None], s[:, None]
        return -(x - a * self.m) / (a**2 * 0.25 + s**2)


def test_adjoint_gradients_match_backpropagation():
    sde = sc.resolve("sde", "vp")
    score = _Shift(sde)
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        score.zero_grad()
        xi = x0.clone().requires_grad_(True)
        out = TorchSDESampler("midpoint", steps=50, adjoint=adjoint, denoise=False).sample(
            score, sde, (16, 4), x_init=xi, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        (out**2).mean().backward()
        grads.append((xi.grad.clone(), score.m.grad.clone()))
    (gx, gm), (ax, am) = grads
    # The sample mean is m (up to the prior's tiny weight), so d mean(out^2) / dm is about 2 m.
    assert 0.3 < float(gm) < 0.9
    # The adjoint integrates the backward SDE with its own discretisation, so the two agree up to
    # discretisation error: the parameter gradient to 1e-4, the (tiny, alpha_T ~ 7e-3) start gradient to 5 %.
    assert_close(am, gm, rtol=1e-4, what="parameter gradient, adjoint vs backpropagation")
    assert torch.allclose(ax, gx, rtol=0.05, atol=1e-3 * float(gx.abs().max()))  # |gx| ~ 7e-5


def test_reverse_time_sde_is_usable_with_torchsde_directly():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=0.5, std=0.4)
    rsde = ReverseTimeSDE(sde, op, event_shape=(2,))
    y0 = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0))
    span = sde.T - sde.eps
    bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=(4000, 2), entropy=1, levy_area_approximation="space-time")
    # float64 times and a step a hair above span / 100: torchsde then takes exactly 100 steps.
    ts = torch.tensor([0.0, span], dtype=torch.float64)
    ys = torchsde.sdeint(rsde, y0, ts, bm=bm, method="srk", dt=span / 100 * (1 + 1e-9))
    x = ys[-1]
    assert abs(float(x.mean()) - 0.5) < 0.03 and abs(float(x.std()) - 0.4) < 0.03
    assert rsde.nfe == 200  # 100 SRK steps x 2 distinct drift states (the third request is cached)


def test_bad_arguments():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde)
    with pytest.raises(sc.ConfigError, match="'method'.*one of"):
        TorchSDESampler("rk4")
    with pytest.raises(sc.ConfigError, match="'method'.*adjoint"):
        TorchSDESampler("srk", adjoint=True)
    with pytest.raises(sc.ConfigError, match="'noise'"):
        TorchSDESampler(steps=2).sample(lambda x, t: op(x, t), sde, (2, 2), noise=NoiseSource.__new__(_SharedBrownian))
    with pytest.raises(sc.ConfigError, match="'steps'"):
        TorchSDESampler(steps=0)
    with pytest.raises(sc.ShapeError, match="'x_init'"):
        TorchSDESampler(steps=2).sample(lambda x, t: op(x, t), sde, (2, 2), x_init=torch.zeros(3, 2))
    with pytest.raises(sc.ConfigError, match="'score'"):
        ReverseTimeSDE(sde, 3.0, event_shape=(2,))
