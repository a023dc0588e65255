"""ClosureDistribution: shapes, one batched solve, pyro seeding, keyed and frozen noise, exact likelihood."""

from __future__ import annotations

import pyro
import pytest
import torch

import stochclosure as sc
from stochclosure.distributions import (
    ClosureDistribution,
    KeyedNormal,
    LikelihoodUnavailableError,
    MemberSeed,
    ProbabilityFlowLikelihood,
)
from stochclosure.errors import ShapeError
from stochclosure.scores.analytic import GaussianScore, LinearGaussianScore
from stochclosure.testing import assert_close


def field_model(steps: int = 20) -> sc.ClosureModel:
    score = LinearGaussianScore("vp", smoothing_length=0.05, gain=0.8, noise_std=0.5)
    return sc.ClosureModel("vp", score, {"type": "probability_flow_heun", "steps": steps})


def vector_model(dim: int = 5, mean: float = 0.0) -> tuple[sc.ClosureModel, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a @ a.T / dim + 0.3 * torch.eye(dim, dtype=torch.float64)
    score = GaussianScore("vp", mean=mean, covariance=cov)
    model = sc.ClosureModel("vp", score, {"type": "probability_flow_heun", "steps": 30}, channels=dim,
                            target_mean=torch.linspace(-1.0, 2.0, dim), target_std=torch.linspace(0.5, 3.0, dim))
    return model, cov


def cond(b: int, n: int = 8) -> sc.Conditioning:
    return sc.Conditioning(fields=torch.randn(b, 1, n, n, generator=torch.Generator().manual_seed(b)))


def test_shapes_and_one_batched_solve(monkeypatch):
    model = field_model()
    calls = []
    original = model.sample

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "sample", counting)
    d = ClosureDistribution(model, cond(6), batch_shape=(2, 3))
    assert d.batch_shape == (2, 3) and d.event_shape == (1, 8, 8)
    x = d.sample((4,))
    assert x.shape == (4, 2, 3, 1, 8, 8)
    assert calls == [4], "the whole sample_shape x batch must be one sampler solve"
    e = d.expand((5, 2, 3))
    assert e.sample().shape == (5, 2, 3, 1, 8, 8)


def test_condition_batch_mismatch_is_a_shape_error():
    with pytest.raises(ShapeError, match="batch_shape"):
        ClosureDistribution(field_model(), cond(5), batch_shape=(2, 3))
    with pytest.raises(ShapeError, match="init_noise"):
        ClosureDistribution(field_model(), cond(2), init_noise=torch.zeros(3, 1, 8, 8))


def test_pyro_seeding_makes_draws_reproducible():
    d = ClosureDistribution(field_model(), cond(3))
    pyro.set_rng_seed(5)
    a = d.sample()
    pyro.set_rng_seed(5)
    b = d.sample()
    c = d.sample()
    assert torch.equal(a, b) and not torch.equal(b, c)

    def draw():
        return pyro.sample("u", d)

    x = pyro.poutine.seed(draw, rng_seed=9)()
    y = pyro.poutine.seed(draw, rng_seed=9)()
    assert torch.equal(x, y)


def test_keyed_member_does_not_depend_on_its_batch():
    model = sc.ClosureModel("vp", LinearGaussianScore("vp", smoothing_length=0.05, noise_std=0.5),
                            {"type": "euler_maruyama", "steps": 10})
    c = cond(4)
    seeds = torch.tensor([3, 1, 4, 1], dtype=torch.int64)
    big = ClosureDistribution(model, c, seeds=seeds).sample()
    for j in range(4):
        one = ClosureDistribution(model, c.index(slice(j, j + 1)), seeds=seeds[j:j + 1]).sample()
        # float32 batched vs single-row kernels may differ in the last bits
        assert_close(one[0], big[j], rtol=1e-6, what="keyed member alone vs in its batch")
    assert float((big[0] - big[1]).abs().max()) > 1e-3 * float(big.abs().max())


def test_frozen_noise_is_a_deterministic_map_of_the_condition():
    model = field_model()
    f = cond(1).fields
    c = sc.Conditioning(fields=torch.cat([f, f, 2 * f]))
    d = ClosureDistribution(model, c, frozen_seed=3)
    x, y = d.sample(), d.sample()
    assert torch.equal(x, y)
    assert_close(x[0], x[1], rtol=1e-6, what="frozen noise, equal conditions")
    assert float((x[0] - x[2]).abs().max()) > 1e-5 * float(x.abs().max())


def test_mean_of_k_draws_approaches_the_conditional_mean():
    model = field_model()
    c = cond(2)
    exact = model.score.mean((1, 8, 8), c).float()
    one = ClosureDistribution(model, c, frozen_seed=0).sample()
    many = ClosureDistribution(model, c, frozen_seed=0, average=64).sample()
    err_one = (one - exact).pow(2).mean().sqrt()
    err_many = (many - exact).pow(2).mean().sqrt()
    # the residual of a 64-draw mean has std 0.5 / 8; allow 2x for the sampler's discretisation
    assert float(err_many) < 2 * 0.5 / 8 < float(err_one)


def test_moments_of_the_analytic_closure():
    model, cov = vector_model()
    d = ClosureDistribution(model, None, grid=(), batch_shape=(2,))
    x = d.sample((3000,)).reshape(-1, 5).double()
    std = model.target_std.double()
    mean = model.target_mean.double()
    want_cov = cov * std[:, None] * std[None, :]
    # 6000 draws: the sample mean's std is <= 3 / sqrt(6000) ~ 0.04
    assert torch.allclose(x.mean(0), mean, atol=0.15)  # abs-tol: statistical, ~4 standard errors of the mean
    assert torch.allclose(torch.cov(x.T), want_cov, atol=0.1 * float(want_cov.abs().max()))


def test_log_prob_needs_the_likelihood_option():
    d = ClosureDistribution(field_model(), cond(2))
    with pytest.raises(LikelihoodUnavailableError, match="'likelihood'.*ProbabilityFlowLikelihood"):
        d.log_prob(torch.zeros(2, 1, 8, 8))
    assert isinstance(LikelihoodUnavailableError("x"), NotImplementedError)


def test_exact_log_prob_matches_the_gaussian_density():
    model, cov = vector_model()
    std, mean = model.target_std.double(), model.target_mean.double()
    law = torch.distributions.MultivariateNormal(mean, cov * std[:, None] * std[None, :])
    x = law.sample(torch.Size([4]))
    d = ClosureDistribution(model, None, grid=(), batch_shape=(4,),
                            likelihood=ProbabilityFlowLikelihood(steps=20, trace="exact"))
    lp = d.log_prob(x.float())
    assert lp.shape == (4,)
    # measured error 2e-4 (start at eps = 1e-3; terminal law exact for zero-mean normalised data)
    assert_close(lp, law.log_prob(x), rtol=2e-4, what="exact log_prob (|log p| ~ 10 nats)")
    h = d.with_options(likelihood=ProbabilityFlowLikelihood(steps=20, trace="hutchinson", probes=64))
    # Hutchinson: unbiased; 64 Rademacher probes give a few 0.1 nats of noise on 5 dims
    assert torch.allclose(h.log_prob(x.float()), law.log_prob(x), atol=0.5)  # abs-tol: estimator noise in nats


def test_exact_log_prob_of_a_conditional_closure():
    a = torch.tensor([[1.0, 0.5], [0.0, -1.0], [0.3, 0.3]], dtype=torch.float64)
    score = LinearGaussianScore("vp", matrix=a, noise_std=0.7)
    model = sc.ClosureModel("vp", score, "euler_maruyama", channels=3)
    y = torch.tensor([[0.2, -0.4], [1.0, 0.3]])
    c = sc.Conditioning(features=y)
    d = ClosureDistribution(model, c, grid=(), likelihood=ProbabilityFlowLikelihood(steps=40))
    u = torch.tensor([[0.1, 0.2, -0.3], [0.9, 0.0, 0.5]])
    ref = torch.distributions.MultivariateNormal(y.double() @ a.T, 0.49 * torch.eye(3, dtype=torch.float64))
    # the conditional mean (|E x| ~ 1) shifts the terminal law by alpha_T |E x| ~ 7e-3 (VP, T = 1)
    assert torch.allclose(d.log_prob(u), ref.log_prob(u.double()), atol=3e-2)  # abs-tol: terminal-law bias in nats


def test_member_seed_and_keyed_normal():
    pyro.set_rng_seed(0)
    s = MemberSeed((3,)).sample()
    assert s.shape == (3,) and s.dtype == torch.int64 and bool((s >= 0).all())
    kn = KeyedNormal(s, salt=7, event_shape=(2, 4))
    z = kn.sample()
    assert z.shape == (3, 2, 4) and torch.equal(z, kn.sample())
    assert torch.equal(KeyedNormal(s[1:2], 7, (2, 4)).sample()[0], z[1])
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((-2, -1))
    assert_close(kn.log_prob(z), ref, rtol=1e-6, what="KeyedNormal log_prob")


def test_keyed_draws_with_a_non_grid_sampler_name_the_ways_out():
    """A sampler written straight against AbstractSampler cannot take per-member starting noise."""
    from stochclosure.errors import IncompatibleComponentsError
    from stochclosure.samplers import AbstractSampler

    class PriorOnly(AbstractSampler):
        def sample(self, score_fn, sde, shape, *, steps=None, generator=None, noise=None, callback=None,
                   x_init=None, dtype=torch.float32, device=None):
            return torch.randn(shape, generator=generator, dtype=dtype)

        def nfe(self, steps=None):
            return 0

    model = sc.ClosureModel("vp", field_model().score, PriorOnly())
    c = cond(2)
    with pytest.raises(IncompatibleComponentsError, match="keyed=False") as err:
        ClosureDistribution(model, c, seeds=torch.tensor([1, 2])).sample()
    assert "GridSampler" in str(err.value)
    # without per-member seeds it samples
    assert ClosureDistribution(model, c).sample().shape == (2, 1, 8, 8)
