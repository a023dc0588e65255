"""Metrics against independent reference implementations (properscoring, brute force, numpy).

Tolerance: 1e-9 of the values' magnitude on float64 inputs (the references are exact up to
rounding; measured differences are <= 3e-15 of the magnitude, any summation order).
"""

from __future__ import annotations

import math

import numpy as np
import properscoring as ps
import pytest
import torch

from stochclosure import metrics
from stochclosure.errors import ShapeError
from stochclosure.testing import assert_close

RTOL = 1e-9


@pytest.fixture
def ens_truth():
    g = torch.Generator().manual_seed(7)
    ens = torch.randn(9, 4, 5, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2
    truth = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    return ens, truth


def test_crps_matches_properscoring(ens_truth):
    ens, truth = ens_truth
    ours = metrics.crps_ensemble(ens, truth).numpy()
    ref = ps.crps_ensemble(truth.numpy(), np.moveaxis(ens.numpy(), 0, -1))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL * np.abs(ref).max())
    # member axis elsewhere
    ours2 = metrics.crps_ensemble(ens.movedim(0, 2), truth, member_dim=2).numpy()
    np.testing.assert_allclose(ours2, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_fair_crps_matches_brute_force(ens_truth):
    ens, truth = ens_truth
    e, y = ens.numpy(), truth.numpy()
    m = e.shape[0]
    term1 = np.abs(e - y).mean(0)
    pair = np.abs(e[:, None] - e[None, :]).sum((0, 1)) / (2 * m * (m - 1))
    ref = term1 - pair
    np.testing.assert_allclose(metrics.crps_ensemble(ens, truth, fair=True).numpy(), ref, rtol=0,
                               atol=RTOL * np.abs(ref).max())


def test_energy_score_matches_brute_force(ens_truth):
    ens, truth = ens_truth
    e = ens.numpy().reshape(9, 4, 30)
    y = truth.numpy().reshape(4, 30)
    t1 = np.linalg.norm(e - y[None], axis=-1).mean(0)
    t2 = np.linalg.norm(e[:, None] - e[None, :], axis=-1).mean((0, 1))
    ours = metrics.energy_score(ens, truth, event_dims=2).numpy()
    np.testing.assert_allclose(ours, t1 - 0.5 * t2, rtol=0, atol=RTOL * np.abs(t1 - 0.5 * t2).max())


def test_energy_score_univariate_equals_crps(ens_truth):
    ens, truth = ens_truth
    es = metrics.energy_score(ens[..., None], truth[..., None], event_dims=1)
    assert_close(es, metrics.crps_ensemble(ens, truth), rtol=RTOL, what="univariate energy score vs CRPS")


def test_spread_skill_and_rank_histogram_match_numpy(ens_truth):
    ens, truth = ens_truth
    e, y = ens.numpy(), truth.numpy()
    spread, rmse = metrics.spread_skill(ens, truth)
    assert float(spread) == pytest.approx(math.sqrt(e.var(0, ddof=1).mean()), rel=RTOL)
    assert float(rmse) == pytest.approx(math.sqrt(((e.mean(0) - y) ** 2).mean()), rel=RTOL)
    ratio = metrics.spread_skill_ratio(ens, truth)
    assert float(ratio) == pytest.approx(math.sqrt(10 / 9) * float(spread) / float(rmse), rel=RTOL)
    per_row, _ = metrics.spread_skill(ens, truth, dims=(1, 2))
    assert per_row.shape == (4,)
    counts = metrics.rank_histogram(ens, truth)
    ranks = (e < y[None]).sum(0).reshape(-1)
    np.testing.assert_array_equal(counts.numpy(), np.bincount(ranks, minlength=10))
    assert int(counts.sum()) == truth.numel()


def test_rank_histogram_breaks_ties_uniformly():
    ens = torch.zeros(3, 4000)
    truth = torch.zeros(4000)
    counts = metrics.rank_histogram(ens, truth, generator=torch.Generator().manual_seed(0))
    _, p = metrics.rank_histogram_chi2(counts)
    assert p > 0.01, counts


def test_chi2_pvalue_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    counts = torch.tensor([30, 41, 25, 38, 33, 27])
    stat, p = metrics.rank_histogram_chi2(counts)
    ref = scipy_stats.chisquare(counts.numpy())
    assert stat == pytest.approx(ref.statistic, rel=RTOL) and p == pytest.approx(ref.pvalue, rel=RTOL)


def test_relative_frobenius_and_mse():
    g = torch.Generator().manual_seed(3)
    truth = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    pred = truth + 0.1 * torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    d = metrics.relative_frobenius_error(pred, truth)
    ref = np.linalg.norm((truth - pred).numpy(), axis=(-2, -1)) / np.linalg.norm(truth.numpy(), axis=(-2, -1))
    np.testing.assert_allclose(d.numpy(), ref, rtol=RTOL)
    assert float(metrics.mse(pred, truth)) == pytest.approx(float(((pred - truth) ** 2).mean()), rel=RTOL)
    with pytest.raises(ShapeError, match="like truth"):
        metrics.mse(pred[:2], truth)


def test_spectra_parseval_and_single_mode():
    n = 32
    x = torch.arange(n, dtype=torch.float64) / n
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    # a single mode |k| = 5: w = cos(2 pi (3x + 4y)), mean(w^2) = 1/2
    w = torch.cos(2 * math.pi * (3 * xx + 4 * yy))
    k, z = metrics.enstrophy_spectrum(w)
    assert int(torch.argmax(z)) == 5 and float(z[5]) == pytest.approx(0.25, rel=RTOL)
    assert float(z.sum() - z[5]) <= RTOL * float(z[5])  # no other shell: zero up to rounding of the mode's value
    _, e = metrics.energy_spectrum(w)
    assert float(e[5]) == pytest.approx(0.25 / (4 * math.pi**2 * 25), rel=RTOL)
    # velocity of that mode: psi = w / (4 pi^2 25), u = (dpsi/dy, -dpsi/dx), mean(|u|^2)/2
    assert float(metrics.energy(w)) == pytest.approx(0.5 * 0.5 * 25 * 4 * math.pi**2 / (4 * math.pi**2 * 25) ** 2,
                                                     rel=RTOL)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 2, n, n, generator=g, dtype=torch.float64)
    _, z = metrics.enstrophy_spectrum(r)
    assert_close(z.sum(-1), metrics.enstrophy(r), rtol=RTOL, what="Parseval: spectrum sum vs enstrophy")
    assert z.shape[:2] == (3, 2)


def test_ensemble_shape_errors_name_the_argument():
    with pytest.raises(ShapeError, match="'ensemble'.*member axis"):
        metrics.crps_ensemble(torch.zeros(4, 3), torch.zeros(5))
    with pytest.raises(ShapeError, match="at least 2 members"):
        metrics.crps_ensemble(torch.zeros(1, 3), torch.zeros(3), fair=True)


def test_r2_coverage_and_the_offline_scorecard_on_a_calibrated_gaussian_ensemble():
    """Truth and members exchangeable N(mu, 1): coverage ~ level, spread-skill ~ 1, R^2 = var(mu) share."""
    from stochclosure.metrics import interval_coverage, offline_scores, r2_score

    g = torch.Generator().manual_seed(11)
    mu = 2.0 * torch.randn(200, 1, 8, 8, generator=g, dtype=torch.float64)
    truth = mu + torch.randn(mu.shape, generator=g, dtype=torch.float64)
    ens = mu + torch.randn((64, *mu.shape), generator=g, dtype=torch.float64)
    assert abs(float(r2_score(mu, truth)) - 0.8) < 0.02  # var(mu) / var(truth) = 4 / 5; n = 12800
    # the empirical interval of M exchangeable members covers level (M - 1) / (M + 1) on average
    expected = 0.8 * 63 / 65
    assert abs(float(interval_coverage(ens, truth, 0.8)) - expected) < 0.015
    card = offline_scores(ens, truth)
    assert abs(card["spread_skill"] - 1) < 0.03 and abs(card["r2"] - 0.8) < 0.02
    assert abs(card["coverage"] - expected) < 0.015
    assert card["crps"] > 0 and card["energy"] > 0
    assert float(r2_score(truth, truth)) == 1.0
