"""Two-scale Lorenz-96: full RK4 model, reduced model with the closure, and the baselines."""

from __future__ import annotations

import pytest
import torch

from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.lorenz96 import Lorenz96, PolynomialAR1Closure, PolynomialClosure


@pytest.fixture(scope="module")
def spun_up():
    # Standard setting K = 8, J = 32, h = 1, b = 10, c = 10, F = 20; 1.5 time units of spin-up.
    s = Lorenz96()
    x, y = s.full_initial_state(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(1500):
        x, y = s.full_step(x, y)
    return s, x, y


@pytest.fixture(scope="module")
def records():
    s = Lorenz96()
    r = s.generate_records(8, generator=torch.Generator().manual_seed(0), spinup_steps=1000, record_every=10,
                           n_records=250)
    return s, r["fields"][8]


def test_standard_setting_runs_on_its_attractor(spun_up):
    s, x, y = spun_up
    assert x.shape == (4, 1, 8) and y.shape == (4, 8, 32)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
    # chaotic, bounded, with the well-known climatology range of X for F = 20 (mean ~ 3.5, |X| < 20)
    assert 1.0 < float(x.std()) and float(x.abs().max()) < 20.0


def test_reduced_model_with_true_closure_reproduces_x(spun_up):
    s, x, y = spun_up
    # step-consistent closure: exact to round-off, over a 200-step rollout
    xr, xf, yf = x, x, y
    xn_none = x
    for _ in range(200):
        xn, yn = s.full_step(xf, yf)
        xr = s.step(xr, s.step_closure(xf, xn))
        xn_none = s.step(xn_none, None)
        xf, yf = xn, yn
    assert float((xr - xf).abs().max()) < 1e-12 * float(xf.abs().max())  # |X| ~ 13
    err_none = float((xn_none - xf).abs().max())
    assert err_none > 1.0, err_none

    # instantaneous closure U = -(hc/b) sum_j Y (REFERENCE §6): first order in dt. Over 0.1 time
    # units the error halves with dt (ratio within [1.7, 2.3]) and stays far below the no-closure one.
    def rollout(dt):
        xr, xf, yf = x, x, y
        for _ in range(round(0.1 / dt)):
            u = s.coupling(yf)
            xf, yf = s.full_step(xf, yf, dt)
            xr = s.step(xr, u, dt)
        return float((xr - xf).abs().max())

    e1, e2 = rollout(1e-3), rollout(5e-4)
    assert 1.7 < e1 / e2 < 2.3, (e1, e2)
    assert e1 < 0.1


def test_cubic_fit_has_the_expected_shape(records):
    # The closure is a drag of the slow variable by the fast ones (Y ~ X / c in equilibrium, so
    # U ~ -(hc/b) J X / c plus the fast advection's correction): U decreases with X over the
    # bulk of the climatology, U(0) is small, and the cubic explains most of the variance.
    s, f = records
    x, u = f["state"], f["U"]
    poly = PolynomialClosure.fit(x, u)
    a0, a1, a2, a3 = poly.coefficients
    assert poly.degree == 3
    assert a1 < -0.5 and abs(a0) < 2.0
    # decreasing over the central 80 % of the climatology (the cubic bends up in the far upper tail)
    lo, hi = float(x.quantile(0.1)), float(x.quantile(0.9))
    grid = torch.linspace(lo, hi, 100, dtype=torch.float64)
    assert bool((a1 + 2 * a2 * grid + 3 * a3 * grid**2 < 0).all())
    ends = poly(torch.tensor([float(x.quantile(0.01)), float(x.quantile(0.99))], dtype=torch.float64))
    assert float(ends[1] - ends[0]) < -5.0
    r2 = 1 - float(poly.residuals(x, u).var() / u.var())
    assert r2 > 0.7, r2
    assert poly(x[:, 0]).shape == x[:, 0].shape


def test_ar1_baseline_fit_and_sampling(records):
    s, f = records
    model = PolynomialAR1Closure.fit(f["state"], f["U"], dt=10 * s.dt)
    assert 0.5 < model.phi < 1.0
    # the sampled noise has the fitted stationary std and lag-one correlation (2000 x 8 draws:
    # tolerances 0.1 on the std ratio and 0.05 on phi, several standard errors)
    state = f["state"][:, 0]
    gen = torch.Generator().manual_seed(0)
    es = []
    e = None
    for _ in range(500):
        u, e = model.sample(state, e, generator=gen)
        es.append(e)
    e = torch.stack(es)
    assert abs(float(e.std()) / model.sigma - 1) < 0.1
    phi_hat = float((e[1:] * e[:-1]).sum() / (e[:-1] ** 2).sum())
    assert abs(phi_hat - model.phi) < 0.05
    assert u.shape == state.shape


def test_generated_records_and_errors(records):
    s, f = records
    assert f["state"].shape == (8, 250, 1, 8) and f["U"].shape == f["U_step"].shape == f["state"].shape
    with pytest.raises(ShapeError, match="state"):
        s.step(torch.zeros(2, 8), None)
    with pytest.raises(ConfigError, match="closures"):
        s.generate_records(1, generator=torch.Generator(), spinup_steps=0, record_every=1, n_records=1,
                           closures=("V",))
    with pytest.raises(ConfigError, match="'K'"):
        Lorenz96(K=2)


def test_polynomial_fit_is_bitwise_reproducible():
    """Identical inputs give identical coefficients (LAPACK's default gelsy did not, in the last bit)."""
    from stochclosure.systems.lorenz96 import PolynomialAR1Closure

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 50, 1, 8, generator=g, dtype=torch.float64)
    u = 0.3 - 0.2 * x + 0.01 * x**3 + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    fits = {(*PolynomialAR1Closure.fit(x, u, dt=0.005).coefficients,) for _ in range(10)}
    assert len(fits) == 1, fits
