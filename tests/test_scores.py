"""Exact Gaussian scores are correct; contract suites over registered operators, encoders, systems."""

from __future__ import annotations

import math

import pytest
import torch

import stochclosure as sc
from stochclosure.encoders import FieldEncoder
from stochclosure.fft import spectral_resample
from stochclosure.scores import GaussianScore, LinearGaussianScore, SpectralCovariance, grf_spectrum
from stochclosure.testing import assert_close, check_encoder, check_score_operator, check_system, registered_examples
from stochclosure.training.losses import dsm_loss


@pytest.mark.parametrize("name,op", list(registered_examples("score_operator")))
def test_registered_score_operators_pass_contract(name, op):
    check_score_operator(op)


@pytest.mark.parametrize("name,enc", list(registered_examples("encoder")))
def test_registered_encoders_pass_contract(name, enc):
    check_encoder(enc)


@pytest.mark.parametrize("name,system", list(registered_examples("system")))
def test_registered_systems_pass_contract(name, system):
    check_system(system)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_dense_gaussian_score_is_gradient_of_log_density(sde_name):
    sde = sc.resolve("sde", sde_name)
    cov = torch.tensor([[1.0, 0.4], [0.4, 0.7]], dtype=torch.float64)
    mean = torch.tensor([0.3, -0.2], dtype=torch.float64)
    op = GaussianScore(sde, mean=mean, covariance=cov)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.05, 0.9, 5, dtype=torch.float64)
    a, s = sde.marginal_coefficients(t)
    logp = 0.0
    for i in range(5):
        law = torch.distributions.MultivariateNormal(a[i] * mean, a[i] ** 2 * cov + s[i] ** 2 * torch.eye(2))
        logp = logp + law.log_prob(x[i])
    (grad,) = torch.autograd.grad(logp, x)
    assert_close(op(x, t), grad, rtol=1e-7, what="analytic score vs autograd of log p")


def test_spectral_score_matches_dense_score_on_small_field():
    """On an 8-point ring the spectral covariance can be written densely: both scores agree."""
    sde = sc.resolve("sde", "vp")
    grf = {"alpha": 2.0, "tau": 3.0, "scale": 50.0}
    op = GaussianScore(sde, grf=grf)
    cov = SpectralCovariance((1, 8), lambda k: grf_spectrum(k, 2.0, 3.0, 50.0))
    dense = torch.stack([cov.apply(e[None, None])[0, 0] for e in torch.eye(8, dtype=torch.float64)])
    dense_op = GaussianScore(sde, covariance=dense + 1e-9 * torch.eye(8, dtype=torch.float64))
    x = torch.randn(4, 1, 8, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    assert_close(op(x, t), dense_op(x[:, 0], t)[:, None], rtol=1e-6, what="spectral vs dense score")


def test_grf_law_is_resolution_consistent():
    """The same continuous spectrum gives the same pointwise variance at 32 and 64 points."""
    spec = lambda k: grf_spectrum(k, 2.5, 7.0, 1.0)  # noqa: E731
    v32 = SpectralCovariance((1, 32, 32), spec).variance().mean()
    v64 = SpectralCovariance((1, 64, 64), spec).variance().mean()
    assert float(v32) == pytest.approx(float(v64), rel=1e-3)


def test_linear_gaussian_field_mean_and_samples():
    op = LinearGaussianScore("vp", smoothing_length=0.05, gain=0.8, noise_grf={"alpha": 2.0, "tau": 3.0, "scale": 100.0})
    y = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    cond = sc.Conditioning(fields=y)
    m = op.mean((1, 16, 16), cond)
    assert m.shape == (3, 1, 16, 16)
    # the smoothing is a low-pass filter with unit DC gain times `gain`
    assert_close(m.mean(dim=(-1, -2)), 0.8 * y.mean(dim=(-1, -2)), rtol=1e-12, what="DC gain of the smoothing")
    draws = op.sample_exact((1, 16, 16), 2000, cond, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (6000, 1, 16, 16)
    emp = draws.reshape(3, 2000, 1, 16, 16).mean(1)
    sd = float(op.covariance((1, 16, 16)).variance().mean().sqrt())
    assert (emp - m).abs().max() < 5 * sd / math.sqrt(2000)
    # the exact score vanishes at the noised mean
    t = torch.full((3,), 0.4, dtype=torch.float64)
    alpha, _ = op.sde.marginal_coefficients(t)
    at_mean = op(alpha[:, None, None, None] * m, t, cond)
    assert float(at_mean.abs().max()) <= 1e-10 * float(op(torch.zeros_like(m), t, cond).abs().max())


def test_linear_gaussian_vector_form():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    op = LinearGaussianScore("ve", matrix=a, noise_std=0.3)
    y = torch.randn(4, 2, dtype=torch.float64)
    assert_close(op.mean((3,), sc.Conditioning(features=y)), y @ a.T, rtol=1e-12, what="conditional mean")
    with pytest.raises(sc.ShapeError, match="cond.features"):
        op(torch.zeros(4, 3), torch.full((4,), 0.5), None)


def test_dsm_loss_is_minimised_by_the_exact_score():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=0.2, std=0.7)
    x0 = op.sample_exact((1, 8, 8), 512, generator=torch.Generator().manual_seed(0)).float()
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - same t and z for each candidate
    exact = dsm_loss(op, sde, x0, generator=gen())
    for scale in (0.8, 1.2):
        worse = dsm_loss(lambda x, t, c, k=scale: k * op(x, t, c), sde, x0, generator=gen())
        assert worse > exact * 1.005
    with pytest.raises(sc.ConfigError, match="'t_range'"):
        dsm_loss(op, sde, x0, t_range=(0.5, 0.1))
    with pytest.raises(sc.ConfigError, match="'weighting'"):
        dsm_loss(op, sde, x0, weighting="nope")


def test_spectral_resample_is_exact_for_band_limited_fields():
    n = 32
    xs = torch.arange(n, dtype=torch.float64) / n
    f = (torch.sin(2 * math.pi * 3 * xs)[:, None] * torch.cos(2 * math.pi * 2 * xs)[None, :])[None, None]
    up = spectral_resample(f, (64, 64))
    xs2 = torch.arange(64, dtype=torch.float64) / 64
    f2 = (torch.sin(2 * math.pi * 3 * xs2)[:, None] * torch.cos(2 * math.pi * 2 * xs2)[None, :])[None, None]
    assert_close(up, f2, rtol=1e-12, what="band-limited field upsampled")
    assert_close(spectral_resample(up, (32, 32)), f, rtol=1e-12, what="band-limited field downsampled")


def test_field_encoder_history_and_errors():
    enc = FieldEncoder(channels=1, history=2)
    cond = sc.Conditioning(fields=torch.randn(2, 1, 8, 8), history=torch.randn(2, 3, 1, 8, 8))
    assert enc(cond, (16, 16)).shape == (2, 3, 16, 16)
    with pytest.raises(sc.ShapeError, match="cond.history.*at least 2 states"):
        enc(sc.Conditioning(fields=torch.randn(2, 1, 8, 8)), (8, 8))
    with pytest.raises(sc.ShapeError, match="cond.fields.*1 channels"):
        enc(sc.Conditioning(fields=torch.randn(2, 2, 8, 8), history=torch.randn(2, 3, 2, 8, 8)), (8, 8))
