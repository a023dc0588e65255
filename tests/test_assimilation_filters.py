"""Ensemble filters against the Kalman filter; the LETKF against per-point ETKFs; inflation."""

from __future__ import annotations

import math

import pytest
import torch

from stochclosure.assimilation import (
    ETKF,
    LETKF,
    AdaptiveInflation,
    AdditiveInflation,
    EnKF,
    Gaussian,
    GridObservation,
    InflationChain,
    KalmanFilter,
    LinearObservation,
    MultiplicativeInflation,
    PointObservation,
    assimilate,
    filter_from_spec,
    gaspari_cohn,
    inflation_from_spec,
    kalman_analysis,
)
from stochclosure.errors import ConfigError, NonFiniteError, ShapeError
from stochclosure.systems import LinearRelaxation
from stochclosure.testing import assert_close


def _gaussian_ensemble(m, n, gen):
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)
    mean = torch.randn(n, generator=gen, dtype=torch.float64)
    return mean + torch.randn(m, n, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def _sample_prior(ens):
    return Gaussian(ens.mean(0), torch.cov(ens.T))


@pytest.mark.parametrize("members,p", [(12, 3), (6, 9)])   # p < M (p x p Gram) and p > M (M x M Gram)
def test_etkf_reproduces_the_kalman_analysis_of_its_sample_moments(members, p, gen):
    n = 4                                                     # N > state dim: the sample covariance is full rank
    ens = _gaussian_ensemble(members, n, gen)
    op = LinearObservation(torch.randn(p, n, generator=gen, dtype=torch.float64),
                           std=0.3 + torch.rand(p, generator=gen, dtype=torch.float64))
    y = torch.randn(p, generator=gen, dtype=torch.float64)
    kf = kalman_analysis(_sample_prior(ens), y, op.matrix((n,)), op.variance((n,)))
    xa = ETKF().analyse(ens, y, op)
    assert_close(xa.mean(0), kf.mean, rtol=1e-11, what="ETKF analysis mean")
    assert_close(torch.cov(xa.T), kf.cov, rtol=1e-11, what="ETKF analysis covariance")


@pytest.mark.parametrize("members,p", [(12, 3), (6, 9)])
def test_centred_enkf_mean_is_the_kalman_mean_of_its_sample_moments(members, p, gen):
    n = 4
    ens = _gaussian_ensemble(members, n, gen)
    op = LinearObservation(torch.randn(p, n, generator=gen, dtype=torch.float64), std=0.5)
    y = torch.randn(p, generator=gen, dtype=torch.float64)
    kf = kalman_analysis(_sample_prior(ens), y, op.matrix((n,)), op.variance((n,)))
    xa = EnKF(centred=True).analyse(ens, y, op, generator=gen)
    assert_close(xa.mean(0), kf.mean, rtol=1e-11, what="centred EnKF analysis mean")


def _slope(ns, errors):
    lx = torch.log(torch.tensor(ns, dtype=torch.float64))
    ly = torch.log(torch.tensor(errors, dtype=torch.float64))
    return float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


def test_enkf_and_etkf_converge_to_the_kalman_filter_as_one_over_sqrt_members():
    """Three cycles of a linear-Gaussian twin run by ``assimilate`` (rollouts of LinearRelaxation with
    its exact random closure) against the Kalman filter fed the same observations.

    For each ensemble size N = 50 ... 3200 the error of the final analysis mean (relative to the
    KF's posterior std) and covariance (relative Frobenius) is the RMS over S = 12 seeds; the
    log-log slope must be -1/2. Tolerance: an RMS over S runs of a squared error with at least one
    degree of freedom has a relative standard error <= 1/sqrt(2 S) = 0.20, so each log-error has
    noise <= 0.20 and the least-squares slope over these 7 log-spaced sizes (sum of squared
    centred log N = 13.5) a standard error <= 0.20 / 3.67 = 0.056: +-0.2 is 3.6 of them.
    """
    system = LinearRelaxation(n=8, spatial_dims=1, gamma=1.0, dt=0.1,
                              forcing_grf={"alpha": 1.0, "tau": 1.0, "scale": 1.0}, forcing_mean=0.3)
    n = 8
    cov_u = system.noise_cov.apply(torch.eye(n, dtype=torch.float64).reshape(n, 1, n)).reshape(n, n)

    def closure(cond):                                       # the exact closure law: U = mean + xi / sqrt(dt)
        return system.closure_sample(cond.fields.shape[0], dtype=cond.fields.dtype)

    op = GridObservation(every=3, std=0.3)
    x0 = torch.zeros(1, n, dtype=torch.float64)
    kf = KalmanFilter(F=(1 - system.gamma * system.dt) * torch.eye(n, dtype=torch.float64), H=op.matrix((1, n)),
                      R=op.variance((1, n)), Q=system.dt * cov_u,
                      b=torch.full((n,), system.dt * system.forcing_mean, dtype=torch.float64))
    sizes, seeds, spread0 = [50, 100, 200, 400, 800, 1600, 3200], range(12), 0.5
    for flt in (ETKF(), EnKF()):
        err_mean, err_cov = [], []
        for members in sizes:
            sq_m, sq_c = 0.0, 0.0
            for seed in seeds:
                res = assimilate(system, closure, x0, observation=op, filter=flt, members=members, cycles=3,
                                 steps_per_cycle=2, seed=seed, init_spread=spread0, record_fields=False)
                ref = kf.run(Gaussian(x0[0], spread0**2 * torch.eye(n, dtype=torch.float64)),
                             list(res.observations), steps_per_cycle=2)[-1]
                ens = res.ensemble.reshape(members, n).double()
                sq_m += float((ens.mean(0) - ref.mean).norm() ** 2 / ref.cov.trace())
                sq_c += float((torch.cov(ens.T) - ref.cov).norm() ** 2 / ref.cov.norm() ** 2)
            err_mean.append(math.sqrt(sq_m / len(seeds)))
            err_cov.append(math.sqrt(sq_c / len(seeds)))
        for what, errors in (("mean", err_mean), ("covariance", err_cov)):
            slope = _slope(sizes, errors)
            assert abs(slope + 0.5) < 0.2, f"{type(flt).__name__} {what}: slope {slope:.3f}, errors {errors}"
            assert errors[-1] < errors[0] / 4, f"{type(flt).__name__} {what}: {errors}"


def _field_problem(gen, members=10, grid=(6, 6), channels=2, points=12):
    ens = torch.randn(members, channels, *grid, generator=gen, dtype=torch.float64)
    ens = ens + torch.linspace(0, 1, grid[-1], dtype=torch.float64)            # some structure
    op = PointObservation(torch.rand(points, len(grid), generator=gen, dtype=torch.float64), channels=0,
                          std=0.2 + 0.3 * torch.rand(points, generator=gen, dtype=torch.float64))
    y = torch.randn(points, generator=gen, dtype=torch.float64)
    return ens, op, y


@pytest.mark.parametrize("gram", ["dense", "local"])
def test_letkf_is_one_etkf_per_grid_point_with_tapered_observations(gram, gen):
    ens, op, y = _field_problem(gen)
    flt = LETKF(radius=0.15, gram=gram)
    xa = flt.analyse(ens, y, op)
    rho = flt.taper((2, 6, 6), op)                                            # (36, 12)
    h, r = op.matrix((2, 6, 6)), op.variance((2, 6, 6))
    for g in (0, 7, 20, 35):
        local = rho[g] > 0
        ref_op = LinearObservation(h[local], std=(r[local] / rho[g, local]).sqrt(), event_shape=(2, 6, 6))
        ref = ETKF().analyse(ens, y[local], ref_op)
        iy, ix = divmod(g, 6)
        assert_close(xa[:, :, iy, ix], ref[:, :, iy, ix], rtol=1e-11, what=f"grid point {g}")


def test_letkf_blocks_and_limits(gen):
    ens, op, y = _field_problem(gen, grid=(8, 8), points=20)
    xa = LETKF(radius=0.1).analyse(ens, y, op)
    assert_close(LETKF(radius=0.1, block=5).analyse(ens, y, op), xa, rtol=1e-12, what="blocked")
    for gram in ("dense", "local"):
        assert_close(LETKF(radius=0.1, gram=gram).analyse(ens, y, op), xa, rtol=1e-11, what=f"{gram} Gram")
    # a very wide taper is 1 - O((d / c)^2) everywhere: the global ETKF
    assert_close(LETKF(radius=1e4).analyse(ens, y, op), ETKF().analyse(ens, y, op), rtol=1e-7, what="wide LETKF")
    # points farther than 2c from every observation keep their forecast (to round-off: mean + anomalies)
    op1 = PointObservation(torch.tensor([[0.5, 0.5]]), std=0.5, channels=0)
    xa1 = LETKF(radius=0.1).analyse(ens, torch.tensor([3.0], dtype=torch.float64), op1)
    assert_close(xa1[:, :, 0, 0], ens[:, :, 0, 0], rtol=1e-14, what="a point outside the taper")
    assert float((xa1[:, :, 4, 4] - ens[:, :, 4, 4]).abs().max()) > 1e-3


def test_letkf_on_a_ring_sees_periodic_neighbours(gen):
    ens = torch.randn(8, 1, 16, generator=gen, dtype=torch.float64)
    op = GridObservation(every=16, std=0.5)                                  # one observation, at x = 0
    xa = LETKF(radius=2 / 16).analyse(ens, torch.tensor([1.0], dtype=torch.float64), op)
    changed = (xa - ens).abs().amax((0, 1)) > 1e-12
    assert changed.tolist() == [True] * 4 + [False] * 9 + [True] * 3      # |i| < 4 across the boundary


def test_gaspari_cohn_values():
    r = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)
    rho = gaspari_cohn(r, 1.0)
    assert_close(rho[[0, 2, 4, 5]], torch.tensor([1.0, 5 / 24, 0.0, 0.0], dtype=torch.float64), rtol=1e-14, what="GC")
    assert bool((rho[:-1] >= rho[1:]).all())


def test_stochastic_filter_is_reproducible_by_generator(gen):
    ens, op, y = _field_problem(gen)
    a = EnKF().analyse(ens, y, op, generator=torch.Generator().manual_seed(4))
    b = EnKF().analyse(ens, y, op, generator=torch.Generator().manual_seed(4))
    c = EnKF().analyse(ens, y, op, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert EnKF().analyse(ens.float(), y, op, generator=gen).dtype == torch.float32


def test_multiplicative_and_additive_inflation(gen):
    ens, op, y = _field_problem(gen, members=50)
    infl = MultiplicativeInflation(1.44).apply(ens, y, op)
    assert_close(infl.mean(0), ens.mean(0), rtol=1e-13, what="inflated mean")
    assert_close(infl - infl.mean(0), 1.2 * (ens - ens.mean(0)), rtol=1e-13, what="anomalies x sqrt(1.44)")
    add = AdditiveInflation(0.5).apply(ens, y, op, generator=gen)
    assert_close(add.mean(0), ens.mean(0), rtol=1e-13, what="additive keeps the mean")
    # added variance 0.25 (M - 1) / M per entry; 72 entries x 50 members: relative standard error ~2 %
    extra = float((add.var(0) - ens.var(0)).mean())
    assert abs(extra / (0.25 * 49 / 50) - 1) < 0.15
    chain = inflation_from_spec([1.21, {"type": "additive", "std": 0.1}])
    assert isinstance(chain, InflationChain) and chain.factor == pytest.approx(1.21)


def test_adaptive_inflation_estimate_is_unbiased():
    """Forecast error drawn from lambda P with lambda = 2 and the ensemble's P: the single-cycle estimate
    averages to 2. Each estimate's relative noise is about sqrt(2 / p) (p = 16 observations), so the
    mean of 400 has a standard error of ~0.035 x 2: the tolerance 0.25 is over 3 of them."""
    g = torch.Generator().manual_seed(7)
    n, m, lam = 16, 400, 2.0
    op = GridObservation(std=0.5)
    est = []
    infl = AdaptiveInflation()
    for _ in range(400):
        ens = torch.randn(m, 1, n, generator=g, dtype=torch.float64)       # P = I (large M: sample P ~ I)
        truth = math.sqrt(lam) * torch.randn(1, n, generator=g, dtype=torch.float64)
        y = op.sample(truth, g)
        est.append(infl.estimate(ens, y, op))
    assert abs(sum(est) / len(est) - lam) < 0.25


def test_adaptive_inflation_smooths_clips_and_keeps_its_state(gen):
    ens, op, y = _field_problem(gen)
    infl = AdaptiveInflation(initial=1.0, memory=0.5, bounds=(1.0, 1.5))
    infl.apply(ens, y * 100, op)                                              # a huge innovation: clipped at 1.5
    assert infl.factor == pytest.approx(0.5 * 1.0 + 0.5 * 1.5)
    again = AdaptiveInflation(initial=1.0, memory=0.5, bounds=(1.0, 1.5))
    again.load_state_dict(infl.state_dict())
    assert again.factor == infl.factor


def test_filter_specs(gen):
    assert isinstance(filter_from_spec("etkf"), ETKF)
    letkf = filter_from_spec({"type": "letkf", "radius": 0.2})
    assert letkf.spec() == {"type": "letkf", "radius": 0.2, "block": None, "weight_stride": 1, "gram": "auto"}
    assert filter_from_spec(letkf.spec()).radius == 0.2
    with pytest.raises(ConfigError, match="'filter.radiuss'"):
        filter_from_spec({"type": "letkf", "radiuss": 0.2})


def test_bad_analysis_inputs(gen):
    ens, op, y = _field_problem(gen)
    with pytest.raises(ShapeError, match="'ensemble'.*at least 2 members"):
        ETKF().analyse(ens[:1], y, op)
    bad = ens.clone()
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="'ensemble'"):
        ETKF().analyse(bad, y, op)
    with pytest.raises(ShapeError, match="'obs_values'.*\\(12,\\)"):
        ETKF().analyse(ens, y[:5], op)
    with pytest.raises(ShapeError, match="'ensemble'.*one member axis"):
        ETKF().analyse(ens[None], y, op)
    with pytest.raises(ConfigError, match="'op'.*locations"):
        LETKF(radius=0.1).analyse(ens, y[:3], LinearObservation(torch.randn(3, 72), event_shape=(2, 6, 6)))
    with pytest.raises(ConfigError, match="'radius'"):
        LETKF(radius=0.0)
    with pytest.raises(ConfigError, match="'factor'"):
        MultiplicativeInflation(0.9)


def test_letkf_weight_interpolation(gen):
    """Weights on every 2nd point of 32^2, interpolated: exact at the lattice points, close elsewhere
    (the weights vary on the localisation scale, c = 0.15, not on the lattice's, 1/16: the increments
    differ by ~6 %; 1/8 = c / 1.2 would give ~19 %)."""
    ens, op, y = _field_problem(gen, members=12, grid=(32, 32), points=40)
    exact = LETKF(radius=0.15).analyse(ens, y, op)
    interp = LETKF(radius=0.15, weight_stride=2, block=50).analyse(ens, y, op)
    assert_close(interp[:, :, ::2, ::2], exact[:, :, ::2, ::2], rtol=1e-11, what="at the weight lattice")
    inc_exact, inc_interp = exact - ens, interp - ens
    rel = float((inc_interp - inc_exact).norm() / inc_exact.norm())
    assert rel < 0.1, rel
    with pytest.raises(ConfigError, match="'weight_stride'.*divisor"):
        LETKF(radius=0.15, weight_stride=3).analyse(ens, y, op)
    ring = torch.randn(8, 1, 12, generator=gen, dtype=torch.float64)
    ring_op = GridObservation(every=3, std=0.5)
    y_ring = torch.randn(4, generator=gen, dtype=torch.float64)
    a, b = LETKF(radius=0.2).analyse(ring, y_ring, ring_op), LETKF(radius=0.2, weight_stride=2).analyse(ring, y_ring,
                                                                                                         ring_op)
    assert_close(a[:, :, ::2], b[:, :, ::2], rtol=1e-11, what="1-D lattice points")
