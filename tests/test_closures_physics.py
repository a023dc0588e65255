"""Physics closures against hand-computed values on analytic fields, and ADM against the true subgrid term.

Fields are one or two Fourier modes ``w = a_1 cos(k_1.x) + a_2 cos(k_2.x)`` on a 32^2 grid in float64,
for which the formulas have closed forms (derived in the docstrings below); agreement is to round-off
(``rtol=1e-11`` of the values' magnitude: a few hundred float64 rounding steps of FFT sums over 1024 points).
"""

from __future__ import annotations

import math

import pytest
import torch

from stochclosure._types import Conditioning
from stochclosure.closures.physics import (
    ADM,
    Bardina,
    DynamicSmagorinsky,
    GradientModel,
    ResolvedCorrection,
    Smagorinsky,
    filter_multiplier,
    germano_leonard,
    nonlinear_exact_hat,
)
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.subgrid import NavierStokes2DSubgrid
from stochclosure.testing import assert_close

N = 32
RTOL = 1e-11
TWO_PI = 2 * math.pi


def _grid():
    x = torch.arange(N, dtype=torch.float64) / N
    return torch.meshgrid(x, x, indexing="ij")


def _two_modes(k1=(2, 1), k2=(-1, 3), a1=0.7, a2=-1.3):
    """The field, the phases and the physical wavevectors of two cosine modes."""
    x, y = _grid()
    v1, v2 = TWO_PI * torch.tensor(k1, dtype=torch.float64), TWO_PI * torch.tensor(k2, dtype=torch.float64)
    t1, t2 = v1[0] * x + v1[1] * y, v2[0] * x + v2[1] * y
    w = (a1 * torch.cos(t1) + a2 * torch.cos(t2))[None, None]
    return w, t1, t2, v1, v2, a1, a2


def _gauss(v, width=2.0 / N):
    return math.exp(-float(v @ v) * width**2 / 24.0)


def _coupling(v1, v2, a1, a2):
    """``N(w) = K sin(t1) sin(t2)`` for two modes: ``K = a1 a2 (k1 x k2)(1/|k1|^2 - 1/|k2|^2)``."""
    cross = float(v1[0] * v2[1] - v1[1] * v2[0])
    return a1 * a2 * cross * (1 / float(v1 @ v1) - 1 / float(v2 @ v2))


def test_exact_nonlinear_term_of_two_modes():
    w, t1, t2, v1, v2, a1, a2 = _two_modes()
    got = torch.fft.irfft2(nonlinear_exact_hat(torch.fft.rfft2(w), N), s=(N, N))
    assert_close(got, _coupling(v1, v2, a1, a2) * torch.sin(t1) * torch.sin(t2), rtol=RTOL, what="P_n N(w)")


def test_resolved_correction_is_the_dropped_triads():
    # both modes inside the 2/3 mask (|k| <= 10 on 32^2) and so are their sum and difference: nothing dropped
    w = _two_modes()[0]
    rc = ResolvedCorrection().mean(Conditioning(fields=w))
    assert float(rc.abs().max()) < 1e-13 * float(w.abs().max())  # exact value 0: round-off of w
    # k1 = (12, 1) is outside the 2/3 mask: the coarse solver drops every triad, R is the whole N
    w, t1, t2, v1, v2, a1, a2 = _two_modes(k1=(12, 1))
    rc = ResolvedCorrection().mean(Conditioning(fields=w))
    assert_close(rc, _coupling(v1, v2, a1, a2) * torch.sin(t1) * torch.sin(t2), rtol=RTOL, what="R, one mode dropped")
    exact = ResolvedCorrection(coarse_nonlinear="exact").mean(Conditioning(fields=w))
    assert float(exact.abs().max()) == 0.0


def test_gradient_model_closed_form():
    """``U = (D^2/12) a1 a2 (k1.k2)(k1 x k2)(1/|k1|^2 - 1/|k2|^2) cos t1 cos t2`` (model docstring)."""
    w, t1, t2, v1, v2, a1, a2 = _two_modes()
    width = 0.09
    got = GradientModel(filter_width=width, resolved_correction=False).mean(Conditioning(fields=w))
    expected = width**2 / 12 * float(v1 @ v2) * _coupling(v1, v2, a1, a2) * torch.cos(t1) * torch.cos(t2)
    assert_close(got, expected, rtol=RTOL, what="Clark model")


def test_bardina_closed_form():
    """``G N(w) - N(G w)``: ``K/2 [G(k1-k2) cos(t1-t2) - G(k1+k2) cos(t1+t2)] - G(k1) G(k2) K sin t1 sin t2``."""
    w, t1, t2, v1, v2, a1, a2 = _two_modes()
    k = _coupling(v1, v2, a1, a2)
    got = Bardina(cb=0.8, resolved_correction=False).mean(Conditioning(fields=w))
    filtered = k / 2 * (_gauss(v1 - v2) * torch.cos(t1 - t2) - _gauss(v1 + v2) * torch.cos(t1 + t2))
    expected = 0.8 * (filtered - _gauss(v1) * _gauss(v2) * k * torch.sin(t1) * torch.sin(t2))
    assert_close(got, expected, rtol=RTOL, what="Bardina model")


@pytest.mark.parametrize("order", [0, 1, 4])
def test_adm_closed_form(order):
    """``w*`` has amplitudes ``s_m a_m``, ``s = sum_k (1 - G)^k``; ``U = G N(w*) - N(w)`` (+ R, zero here)."""
    w, t1, t2, v1, v2, a1, a2 = _two_modes()
    s1, s2 = (sum((1 - _gauss(v)) ** j for j in range(order + 1)) for v in (v1, v2))
    k = _coupling(v1, v2, a1, a2)
    expected = (s1 * s2 * k / 2 * (_gauss(v1 - v2) * torch.cos(t1 - t2) - _gauss(v1 + v2) * torch.cos(t1 + t2))
                - k * torch.sin(t1) * torch.sin(t2))
    for rc in (True, False):  # both modes' triads are inside the 2/3 mask, so R = 0 and both agree
        got = ADM(order=order, resolved_correction=rc).mean(Conditioning(fields=w))
        assert_close(got, expected, rtol=RTOL, what=f"ADM order {order}")


def test_smagorinsky_hand_computed_flux():
    """``w = A cos(p x)``: ``|S| = |A cos(p x)|``, flux ``(c_s D)^2 |S| d_x w`` along x, ``U = d_x flux``."""
    x, _ = _grid()
    a, p, cs, delta = 1.7, TWO_PI * 3, 0.2, 0.05
    w = (a * torch.cos(p * x))[None, None]
    flux = (cs * delta) ** 2 * (a * torch.cos(p * x)).abs() * (-a * p * torch.sin(p * x))
    lx = TWO_PI * torch.fft.fftfreq(N, 1.0 / N, dtype=torch.float64)[:, None]
    fh = torch.fft.rfft2(flux) * 1j * lx
    fh[N // 2, :] = 0
    fh[:, N // 2] = 0
    expected = torch.fft.irfft2(fh, s=(N, N))
    got = Smagorinsky(cs=cs, delta=delta, resolved_correction=False).mean(Conditioning(fields=w))
    assert_close(got[0, 0], expected, rtol=RTOL, what="Smagorinsky")
    assert float((got[0, 0] * w[0, 0]).mean()) < 0, "eddy viscosity must dissipate enstrophy"


def _leonard_two_modes(test_width):
    """``L = hat(u w) - hat(u) hat(w)`` from ``u w = sum_mn a_m a_n sin t_m cos t_n k_m^perp / |k_m|^2``."""
    w, t1, t2, v1, v2, a1, a2 = _two_modes()
    modes = [(a1, t1, v1), (a2, t2, v2)]
    lx = torch.zeros_like(t1)
    ly = torch.zeros_like(t1)
    for am, tm, vm in modes:
        for an, tn, vn in modes:
            # sin tm cos tn = (sin(tm + tn) + sin(tm - tn)) / 2, each filtered by T at its wavevector
            f = 0.5 * (_gauss(vm + vn, test_width) * torch.sin(tm + tn) + _gauss(vm - vn, test_width) * torch.sin(tm - tn))
            f = f - _gauss(vm, test_width) * _gauss(vn, test_width) * torch.sin(tm) * torch.cos(tn)
            c = am * an / float(vm @ vm)
            lx, ly = lx - c * float(vm[1]) * f, ly + c * float(vm[0]) * f
    return w, lx, ly


def test_germano_leonard_stress_closed_form():
    tw = 0.1
    w, lx, ly = _leonard_two_modes(tw)
    got_x, got_y = germano_leonard(w, filter_multiplier(N, "gaussian", tw, torch.float64))
    scale = torch.stack((lx, ly))
    assert_close(torch.stack((got_x[0, 0], got_y[0, 0])), scale, rtol=RTOL, what="Leonard stress L")


def test_dynamic_smagorinsky_coefficient_properties():
    g = torch.Generator().manual_seed(0)
    w = NavierStokes2DSubgrid(n=N, n_fine=64).initial_state(3, generator=g, dtype=torch.float64)
    law = DynamicSmagorinsky(resolved_correction=False)
    c = law.coefficient(w)
    assert c.shape == (3,) and bool((c >= 0).all())
    assert_close(law.coefficient(5.0 * w), c, rtol=1e-10, what="C is amplitude-invariant (L and M both ~ A^2)")
    # U = C div(m) is the Smagorinsky term with c_s^2 = C and Delta the filter width
    for b in range(3):
        smag = Smagorinsky(cs=math.sqrt(float(c[b])), delta=2.0 / N, resolved_correction=False)
        assert_close(law.mean(Conditioning(fields=w[b:b + 1])), smag.mean(Conditioning(fields=w[b:b + 1])),
                     rtol=1e-10, what=f"dynamic = Smagorinsky at the fitted C, member {b}")


def _band_limited_fine_field(n_fine=64, kmax=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    kx = torch.fft.fftfreq(n_fine, 1.0 / n_fine, dtype=torch.float64)[:, None]
    ky = torch.fft.rfftfreq(n_fine, 1.0 / n_fine, dtype=torch.float64)[None, :]
    mask = (kx.abs() <= kmax) & (ky.abs() <= kmax) & (kx**2 + ky**2 > 0)
    shape = (2, 1, n_fine, n_fine // 2 + 1)
    c = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                      torch.randn(shape, generator=g, dtype=torch.float64)) * mask / (1 + kx**2 + ky**2)
    return torch.fft.irfft2(c * n_fine**2, s=(n_fine, n_fine))


def test_adm_reproduces_the_subgrid_term_to_its_order():
    """Fine field band-limited to ``|k| <= 8`` (resolved on 32^2), Gaussian filter of width ``2/n``.

    Then ``bar(w) = G P_n w`` and the van Cittert series leaves exactly the remainder
    ``e_p = (1 - G)^{p+1} P_n w``: the ADM error equals ``G P_n [N(w - e_p) - N(w)]`` to round-off,
    decreases with the order at least as fast as ``max (1 - G)`` over the field's modes (0.56 at
    the corner ``k = (8, 8)``), and vanishes (round-off) at high order.
    """
    system = NavierStokes2DSubgrid(n=N, n_fine=64, filter="gaussian")
    wf = _band_limited_fine_field()
    wb, u_true = system.filter(wf), system.closure_term(wf)
    cond = Conditioning(fields=wb)
    gm = filter_multiplier(N, "gaussian", None, torch.float64)
    w_hat = torch.fft.rfft2(wb) / gm
    errors = []
    for p in range(10):
        u = ADM.from_system(system, order=p).mean(cond)
        e_hat = (1 - gm) ** (p + 1) * w_hat
        predicted = torch.fft.irfft2(gm * (nonlinear_exact_hat(w_hat - e_hat, N) - nonlinear_exact_hat(w_hat, N)),
                                     s=(N, N))
        assert_close(u - u_true, predicted, rtol=1e-9, what=f"ADM error vs van Cittert remainder, order {p}")
        errors.append(float((u - u_true).abs().max() / u_true.abs().max()))
    worst = 1 - math.exp(-(TWO_PI**2) * 2 * 8**2 * (2.0 / N) ** 2 / 24)
    ratios = [b / a for a, b in zip(errors, errors[1:])]
    assert all(r <= worst * 1.02 for r in ratios), f"error ratios {ratios} exceed max(1 - G) = {worst:.3f}"
    assert errors[-1] < 1e-2 < errors[0]
    assert_close(ADM.from_system(system, order=60).mean(cond), u_true, rtol=1e-9, what="ADM order 60 vs true U")


def test_adm_with_the_sharp_filter_is_the_resolved_correction():
    system = NavierStokes2DSubgrid(n=N, n_fine=64, filter="spectral")
    wf = _band_limited_fine_field()
    cond = Conditioning(fields=system.filter(wf))
    u_true = system.closure_term(wf)  # no unresolved modes: U is exactly the dropped resolved triads
    assert_close(ADM.from_system(system).mean(cond), u_true, rtol=1e-10, what="ADM (sharp filter) vs U")
    assert_close(ResolvedCorrection.from_system(system).mean(cond), u_true, rtol=1e-10, what="R vs U")


def test_physics_closures_work_in_float32_and_sample_copies():
    w = _two_modes()[0].float()
    law = ADM(order=3)
    s = law.sample(Conditioning(fields=w), n=3)
    assert s.shape == (3, 1, 1, N, N) and s.dtype == torch.float32
    assert torch.equal(s[0], s[2])
    # U is a difference of terms ~80x larger (|N| ~ 0.6, |U| ~ 0.008): float32 keeps ~1e-7 * 80 of |U|
    assert_close(s[0], law.mean(Conditioning(fields=w.double())), rtol=1e-3, what="float32 vs float64")


@pytest.mark.parametrize("make,error", [
    (lambda: ADM(order=-1), ConfigError),
    (lambda: ADM(order=2.5), ConfigError),
    (lambda: GradientModel(filter_width=-0.1), ConfigError),
    (lambda: Smagorinsky(cs=-0.1), ConfigError),
    (lambda: DynamicSmagorinsky(test_ratio=1.0), ConfigError),
    (lambda: Bardina(filter="spectral"), ConfigError),
    (lambda: ADM(pad=1.2), ConfigError),
    (lambda: ADM().mean(Conditioning(fields=torch.zeros(2, 2, 16, 16))), ShapeError),
    (lambda: ADM().mean(Conditioning(fields=torch.zeros(2, 1, 16, 12))), ShapeError),
    (lambda: ADM().mean(Conditioning(fields=torch.zeros(2, 1, 16, 16)), grid=(8, 8)), ShapeError),
])
def test_bad_options_raise_typed_errors(make, error):
    with pytest.raises(error):
        make()


def test_smagorinsky_fit_recovers_a_known_constant():
    g = torch.Generator().manual_seed(2)
    w = NavierStokes2DSubgrid(n=N, n_fine=64).initial_state(3, generator=g, dtype=torch.float64)
    cond = Conditioning(fields=w)
    truth = Smagorinsky(cs=0.23).mean(cond)  # includes R: fit must remove it before the least squares
    fitted = Smagorinsky.fit(cond, truth)
    assert_close(torch.tensor(fitted.cs), torch.tensor(0.23), rtol=1e-10, what="fitted c_s")
    with pytest.raises(ShapeError):
        Smagorinsky.fit(cond, truth[:, :, :8])
