"""Correctness of the pseudo-spectral stochastic Navier–Stokes solver and its closures G and H."""

from __future__ import annotations

import math

import pytest
import torch

from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.navier_stokes import NavierStokes2D, coarsen
from stochclosure.systems.spectral import spectral_grid
from stochclosure.testing import assert_close


def _scaled_ic(s: NavierStokes2D, batch: int = 2, rms: float = 1.0, seed: int = 0) -> torch.Tensor:
    w = s.initial_state(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w * (rms / w.pow(2).mean().sqrt())


def test_single_mode_decays_at_the_crank_nicolson_rate():
    # A single Fourier mode has u parallel to its level lines, so advection vanishes identically and
    # each step multiplies it by (1 - h) / (1 + h), h = dt nu |lambda|^2 / 2 (exact up to round-off).
    n, nu, dt, steps = 32, 1e-2, 1e-2, 25
    s = NavierStokes2D(n=n, nu=nu, dt=dt, sigma=0.0, forcing_amplitude=0.0)
    x = torch.arange(n, dtype=torch.float64) / n
    k = (3, 2)
    w = torch.cos(2 * math.pi * (k[0] * x[:, None] + k[1] * x[None, :])).expand(1, 1, n, n).clone()
    h = 0.5 * dt * nu * 4 * math.pi**2 * (k[0] ** 2 + k[1] ** 2)
    out = w
    for _ in range(steps):
        out = s.full_step(out)
    assert_close(out, w * ((1 - h) / (1 + h)) ** steps, rtol=3e-13, what="decayed mode (|w| ~ 0.28)")


def test_inviscid_run_conserves_energy_and_enstrophy():
    # nu = 0, no forcing, no noise, dealiased initial field: the Galerkin-truncated advection
    # conserves E = <psi, w>/2 and Z = <w, w>/2 exactly; forward Euler adds exactly dt^2 |N|^2 / 2
    # to Z per step. Both are asserted: the tiny drift, and the discrete identity to round-off.
    n, dt, steps = 32, 1e-4, 500
    s = NavierStokes2D(n=n, nu=0.0, dt=dt, sigma=0.0, forcing_amplitude=0.0)
    g = spectral_grid(n)
    w = torch.fft.irfft2(torch.fft.rfft2(_scaled_ic(s)) * g.dealias, s=(n, n))

    def energy(w):
        psi = torch.fft.irfft2(torch.fft.rfft2(w) * g.inv_lam2, s=(n, n))
        return 0.5 * (psi * w).mean(dim=(1, 2, 3))

    def enstrophy(w):
        return 0.5 * w.pow(2).mean(dim=(1, 2, 3))

    e0, z0 = energy(w), enstrophy(w)
    predicted = torch.zeros_like(z0)
    for _ in range(steps):
        nl = torch.fft.irfft2(g.nonlinear_hat(torch.fft.rfft2(w)), s=(n, n))
        predicted += 0.5 * dt**2 * nl.pow(2).mean(dim=(1, 2, 3))
        w = s.full_step(w)
    rel_e = ((energy(w) - e0) / e0).abs().max()
    rel_z = ((enstrophy(w) - z0) / z0).abs().max()
    # the drift itself is O(dt T |N|^2 / |w|^2) ~ 1e-6 here
    assert rel_e < 1e-5 and rel_z < 1e-5, (rel_e, rel_z)
    assert_close(enstrophy(w) - z0, predicted, rtol=1e-6, what="enstrophy drift vs dt^2 |N|^2 / 2")


def test_noise_spectrum_matches_the_analytic_one():
    # E|dW_k|^2 = kappa exp(-alpha |lambda_k|^2) / dt per forward-normalised mode. |dW_k|^2 is
    # exponential (rel. std 1; sqrt(2) for the real k = 0 mode): with M = 2000 draws the per-mode
    # relative error has std <= 0.032, so 0.18 (about 5.6 std) bounds every one of the ~170 modes
    # tested and 0.02 (about 8 std of the mean of independent modes) bounds their average.
    n, m = 32, 2000
    s = NavierStokes2D(n=n, dt=1e-3)
    nh = s.noise_hat(m, generator=torch.Generator().manual_seed(7)) / n**2
    emp = nh.abs().pow(2).mean(dim=(0, 1))
    exact = s.noise_spectrum()
    sel = exact > 1e-6 * exact.max()
    rel = (emp[sel] - exact[sel]) / exact[sel]
    assert sel.sum() > 100
    assert rel.abs().max() < 0.18, float(rel.abs().max())
    assert rel.mean().abs() < 0.02, float(rel.mean())
    # the physical field has the matching pointwise variance (Parseval over the full plane)
    phys = s.noise(m, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    full_plane = exact.sum() + exact[:, 1:n // 2].sum()
    assert abs(float(phys.var()) / float(full_plane) - 1) < 0.05
    # the noise realisation does not depend on the resolution (same generator, n >= 40)
    a = NavierStokes2D(n=64).noise(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = NavierStokes2D(n=128).noise(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_close(a, b[..., ::2, ::2], rtol=1e-13, what="noise at 64^2 vs 128^2 (|dW| ~ 1e3)")


def test_halving_dt_shows_first_order_convergence():
    # Deterministic part of the scheme (sigma = 0; the noise enters additively and explicitly):
    # successive differences between runs with dt = 0.01, 0.005, 0.0025, 0.00125 to T = 0.5 shrink by
    # a factor 2 (first order; measured 2.08 and 2.04); tolerance [1.8, 2.2].
    s = NavierStokes2D(n=32, nu=1e-3, sigma=0.0)
    w0 = _scaled_ic(s, rms=1.0)
    finals = []
    for dt in (0.01, 0.005, 0.0025, 0.00125):
        w = w0
        for _ in range(round(0.5 / dt)):
            w = s.full_step(w, dt)
        finals.append(w)
    diffs = [float((finals[i] - finals[i + 1]).norm()) for i in range(3)]
    ratios = [diffs[i] / diffs[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), ratios


def test_float32_agrees_with_float64_over_a_short_run():
    # Same seed -> same noise in both precisions; 200 steps at 32^2. Round-off (float32 eps 1.2e-7)
    # accumulates at most linearly over the steps: bound 200 x 2 eps = 4.8e-5 (measured 2e-5).
    s = NavierStokes2D(n=32)
    w64 = _scaled_ic(s)
    w32 = w64.float()
    g64, g32 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(200):
        w64 = s.full_step(w64, generator=g64)
        w32 = s.full_step(w32, generator=g32)
    assert w32.dtype == torch.float32
    rel = float((w32.double() - w64).norm() / w64.norm())
    assert rel < 200 * 2 * 1.2e-7, rel


@pytest.mark.parametrize("closure", ["G", "H"])
def test_reduced_step_with_true_closure_reproduces_the_full_step(closure):
    # One step and a 100-step rollout fed the true closure of the full trajectory agree with the
    # full solver to round-off (float64); the no-closure baseline drifts by orders of magnitude more.
    s = NavierStokes2D(n=32, closure=closure)
    w = _scaled_ic(s)
    gen = torch.Generator().manual_seed(11)
    full, reduced, baseline = w, w, w
    for _ in range(100):
        nxt, clo = s.full_step_with_closures(full, generator=gen)
        reduced = s.step(full, clo[closure])
        assert_close(reduced, nxt, rtol=3e-14, what="reduced step with the true closure vs full step")
        baseline = s.step(baseline, None)
        full = nxt
    # a reduced rollout from its own state, fed the true closure of the full trajectory
    gen = torch.Generator().manual_seed(11)
    full, red = w, w
    for _ in range(100):
        nxt, clo = s.full_step_with_closures(full, generator=gen)
        red = s.step(red, clo[closure])
        full = nxt
    err_closure = float((red - full).norm() / full.norm())
    err_none = float((baseline - full).norm() / full.norm())
    assert err_closure < 1e-11, err_closure
    assert err_none > 1e-4 and err_none > 1e6 * err_closure, (err_none, err_closure)


def test_closure_terms_match_their_definitions():
    # G = nu Lap w + 2 sigma dW and H = -(u.grad w)_dealiased + sigma dW, with the given dW.
    s = NavierStokes2D(n=32)
    w = _scaled_ic(s)
    dw = s.noise(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = s.closure_terms(w, dw)
    c0 = s.closure_terms(w)
    # the noise is added to terms of size ~1-2.5: compare at their magnitude (2e-15: a few float64 steps)
    assert_close(c["G"], c0["G"] + 2 * s.sigma * dw, rtol=2e-15, what="G with noise")
    assert_close(c["H"], c0["H"] + s.sigma * dw, rtol=2e-15, what="H with noise")
    g = spectral_grid(32)
    lap = torch.fft.irfft2(-g.lam2 * torch.fft.rfft2(w), s=(32, 32))
    assert_close(c0["G"], s.nu * lap, rtol=1e-14, what="G without noise vs nu Lap w")
    # with the same noise, full_step(noise=) and closure_terms agree
    _, c2 = s.full_step_with_closures(w, noise=dw)
    assert_close(c2["H"], c["H"], rtol=4e-15, what="H of full_step(noise=) vs closure_terms")


def test_grf_initial_state_is_seeded_zero_mean_and_dtype_consistent():
    s = NavierStokes2D(n=32)
    a = s.initial_state(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = s.initial_state(3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert a.shape == (3, 1, 32, 32) and b.dtype == torch.float32
    assert_close(a.float(), b, rtol=1e-6, what="float32 vs float64 initial state")
    assert float(a.mean(dim=(2, 3)).abs().max()) < 1e-12 * float(a.abs().max())


def test_coarsening_by_stride_and_spectral_truncation():
    s = NavierStokes2D(n=64)
    w = s.initial_state(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_close(coarsen(w, 32, "stride"), w[..., ::2, ::2], rtol=0, what="stride coarsening")
    spec = coarsen(w, 32, "spectral")
    assert spec.shape == (2, 1, 32, 32)
    # a band-limited field (modes < 16) is reproduced exactly by both
    bl = torch.fft.irfft2(torch.fft.rfft2(w) * spectral_grid(64).dealias, s=(64, 64))  # |k| <= 21
    bl = coarsen(coarsen(bl, 32, "spectral"), 64, "spectral")
    assert_close(coarsen(bl, 32, "stride"), coarsen(bl, 32, "spectral"), rtol=1e-12, what="band-limited field")
    with pytest.raises(ShapeError, match="resolution"):
        coarsen(w, 24, "stride")


def test_errors_name_the_argument():
    with pytest.raises(ConfigError, match="closure"):
        NavierStokes2D(closure="K")
    with pytest.raises(ConfigError, match="'n'"):
        NavierStokes2D(n=33)
    s = NavierStokes2D(n=16)
    with pytest.raises(ShapeError, match="state.*n=32"):
        s.step(torch.zeros(1, 1, 32, 32), None)
    with pytest.raises(ShapeError, match="closure_term"):
        s.step(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    s = NavierStokes2D(n=32)
    w = _scaled_ic(s)
    a = s.full_step(w, generator=torch.Generator().manual_seed(0))
    b = s.full_step(w.cuda(), generator=torch.Generator().manual_seed(0))
    assert_close(b.cpu(), a, rtol=1e-12, what="full step on the GPU vs the CPU")


def test_fast_noise_path_equals_the_explicit_one():
    # full_step adds the low-mode noise block in place; with the closures (or a given noise)
    # it builds the full spectral noise. Same generator state -> same next state.
    s = NavierStokes2D(n=64)
    w = _scaled_ic(s)
    a = s.full_step(w, generator=torch.Generator().manual_seed(4))
    b, _ = s.full_step_with_closures(w, generator=torch.Generator().manual_seed(4))
    dw = s.noise(2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    c = s.full_step(w, noise=dw)
    assert_close(a, b, rtol=3e-15, what="in-place low-mode noise vs full spectral noise")
    assert_close(a, c, rtol=3e-15, what="in-place low-mode noise vs given noise")
