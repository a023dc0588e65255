"""The bootstrap particle filter (pyro SMCFilter over rollout segments) against the Kalman filter."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from stochclosure.assimilation import BootstrapParticleFilter, Gaussian, GridObservation, KalmanFilter
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.base import AbstractSystem


class ScalarAR(AbstractSystem):
    """``x' = a x``: with the rollout's initial perturbation ``q z`` a segment is ``a (x + q z)``, an AR(1)."""

    spatial_dims: ClassVar[int] = 1

    def __init__(self, a: float = 0.9, dt: float = 1.0) -> None:
        self.a, self.dt = a, dt

    def step(self, state, closure_term, dt=None):
        return self.a * state

    def initial_state(self, batch, *, generator=None, dtype=torch.float32):
        return torch.randn(batch, 1, 1, generator=generator, dtype=dtype)


def _problem(steps=12, q=0.5, r=0.7, seed=1):
    system, op = ScalarAR(), GridObservation(std=r)
    g = torch.Generator().manual_seed(seed)
    x, ys = torch.zeros(1, 1, dtype=torch.float64), []
    for _ in range(steps):
        x = system.a * (x + q * torch.randn(1, 1, generator=g, dtype=torch.float64))
        ys.append(op.sample(x, g))
    kf = KalmanFilter(F=torch.tensor([[system.a]]), H=torch.tensor([[1.0]]), R=torch.tensor([r * r]),
                      Q=torch.tensor([(system.a * q) ** 2]))
    ref = kf.run(Gaussian(torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64)), ys)
    return system, op, ys, ref, q


def test_particle_filter_matches_the_kalman_filter_within_monte_carlo_error():
    """Posterior means and variances of 4000 particles vs the exact KF on a scalar linear-Gaussian model.

    The weighted mean of a self-normalised importance sample has standard error ~ sigma / sqrt(ESS),
    and its variance ~ sigma^2 sqrt(2 / ESS); earlier resampling adds a factor of order one, so the
    test allows 5 such standard errors at every step (12 steps).
    """
    system, op, ys, ref, q = _problem()
    pf = BootstrapParticleFilter(system, None, op, particles=4000, steps_per_cycle=1, init_perturbation=q)
    init = torch.randn(4000, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = pf.run(init, ys, seed=3)
    assert res.mean.shape == (12, 1, 1) and res.ess.shape == (12,)
    for t, g in enumerate(ref):
        sd, ess = math.sqrt(float(g.cov)), float(res.ess[t])
        assert 100 < ess <= 4000
        assert abs(float(res.mean[t]) - float(g.mean)) < 5 * sd / math.sqrt(ess), t
        assert abs(float(res.variance[t]) / float(g.cov) - 1) < 5 * math.sqrt(2 / ess), t
    assert abs(float(res.log_weights.exp().sum()) - 1) < 1e-9      # normalised weights


def test_particle_filter_is_reproducible_by_seed():
    system, op, ys, _, q = _problem(steps=4)
    pf = BootstrapParticleFilter(system, None, op, particles=200, steps_per_cycle=2, init_perturbation=q)
    init = torch.randn(200, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b, c = pf.run(init, ys, seed=5), pf.run(init, ys, seed=5), pf.run(init, ys, seed=6)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.particles, b.particles)
    assert not torch.equal(a.mean, c.mean)


def test_particle_filter_refuses_bad_input():
    system, op, ys, _, _ = _problem(steps=2)
    pf = BootstrapParticleFilter(system, None, op, particles=10, steps_per_cycle=1)
    with pytest.raises(ShapeError, match="'initial'.*\\(10, \\*state\\)"):
        pf.run(torch.zeros(5, 1, 1), ys)
    with pytest.raises(ShapeError, match="'observations\\[0\\]'"):
        pf.run(torch.zeros(10, 1, 1), [torch.zeros(3)])
    with pytest.raises(ConfigError, match="'particles'"):
        BootstrapParticleFilter(system, None, op, particles=0, steps_per_cycle=1)
    with pytest.raises(ConfigError, match="'keyed'"):
        BootstrapParticleFilter(system, None, op, particles=4, steps_per_cycle=1, keyed=False)
