"""Every built-in closure law passes the closure-law contract (shapes, determinism, batch independence,
spec round trip), and the noise and composite laws do what their formulas say."""

from __future__ import annotations

import math

import pytest
import torch

import stochclosure as sc
from stochclosure._types import Conditioning
from stochclosure.closures import (
    ADM,
    AbstractClosureLaw,
    ColouredNoise,
    PhysicsPlusNoise,
    ResidualLaw,
    WhiteNoise,
    fit_ar1,
)
from stochclosure.closures.noise import radial_spectrum
from stochclosure.config import Configurable
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.subgrid import NavierStokes2DSubgrid
from stochclosure.testing import assert_close, check_closure_law


def _cond(b=3, n=16, seed=0):
    w = NavierStokes2DSubgrid(n=n, n_fine=32).initial_state(b, generator=torch.Generator().manual_seed(seed))
    return Conditioning(fields=w)


def _fitted(law):
    g = torch.Generator().manual_seed(1)
    law.fit(torch.randn(8, 1, 16, 16, generator=g).cumsum(-1))
    return law


LAWS = {
    "smagorinsky": lambda: sc.resolve("closure", "smagorinsky"),
    "dynamic_smagorinsky": lambda: sc.resolve("closure", "dynamic_smagorinsky"),
    "gradient": lambda: sc.resolve("closure", {"type": "gradient", "filter_width": 0.1}),
    "bardina": lambda: sc.resolve("closure", "bardina"),
    "adm": lambda: sc.resolve("closure", {"type": "adm", "order": 3, "pad": 2.0}),
    "resolved_correction": lambda: sc.resolve("closure", "resolved_correction"),
    "white": lambda: sc.resolve("closure", {"type": "white", "sigma": 0.3}),
    "coloured": lambda: _fitted(ColouredNoise()),
    "residual": lambda: sc.resolve("closure", {"type": "residual", "physics": "gradient",
                                               "residual": {"type": "white", "sigma": 0.1}}),
    "physics_plus_noise": lambda: PhysicsPlusNoise("adm", "coloured").fit(_cond(4, seed=2), 1e-3 * torch.randn(
        4, 1, 16, 16, generator=torch.Generator().manual_seed(4))),
}


class LinearGaussianLaw(Configurable, AbstractClosureLaw):
    """A user-written law: ``U = a * w + b * z`` (heteroscedastic-free Gaussian around a linear mean)."""

    component_kind = "closure"
    reparameterised = True

    def __init__(self, a: float = 0.5, b: float = 0.1) -> None:
        super().__init__()
        self.a, self.b = a, b

    def latent_shape(self, cond, grid):
        return (1, *grid)

    def draw(self, cond, latent, *, grid=None, generator=None):
        return self.a * cond.fields + self.b * latent

    def mean(self, cond, *, grid=None):
        return self.a * cond.fields


def test_a_user_written_law_passes_the_contract():
    check_closure_law(LinearGaussianLaw(0.3, 0.2), _cond())


def test_every_registered_closure_law_is_covered():
    assert set(sc.registry.available("closure")["closure"]) >= set(LAWS)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_builtin_closure_laws_pass_the_contract(name):
    check_closure_law(LAWS[name](), _cond())


def test_registered_examples_pass_through_check_component():
    """Each built-in's ``example()`` (or no-argument instance), as ``registered_examples`` builds it."""
    from stochclosure.testing import check_component

    for name in sorted(LAWS):
        cls = sc.registry.get("closure", name)
        check_component("closure", cls.example() if hasattr(cls, "example") else cls())


def test_contract_catches_a_law_that_mixes_batch_members():
    class Mixing(WhiteNoise):
        def draw(self, cond, latent, *, grid=None, generator=None):
            return super().draw(cond, latent, grid=grid, generator=generator).mean(0, keepdim=True).expand(
                latent.shape)

    with pytest.raises(AssertionError, match="batch member"):
        check_closure_law(Mixing(), _cond())


def test_white_noise_fit_and_log_prob():
    g = torch.Generator().manual_seed(0)
    x = 0.25 * torch.randn(64, 2, 8, 8, generator=g, dtype=torch.float64)
    law = WhiteNoise(channels=2).fit(x)
    # 64*64 = 4096 values per channel: the rms has a relative standard error of 1/sqrt(2*4096) = 1.1 %
    assert_close(law.sigma, torch.full((2,), 0.25, dtype=torch.float64), rtol=0.05, what="fitted sigma")
    lp = law.log_prob(x[:1], Conditioning(fields=x[:1]))
    s = law.sigma.view(2, 1, 1)
    expected = (-0.5 * (x[:1] / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    assert_close(lp, expected, rtol=1e-12, what="white log_prob")
    assert sc.resolve("closure", law.spec()).spec() == law.spec()


def test_coloured_noise_reproduces_the_fitted_spectrum():
    """Samples of an anisotropic-free reference field: a white field smoothed by exp(-|k|^2 / 20)."""
    g = torch.Generator().manual_seed(0)
    n = 32
    k2 = (torch.fft.fftfreq(n, 1 / n)[:, None] ** 2 + torch.fft.rfftfreq(n, 1 / n)[None, :] ** 2).double()
    ref = torch.fft.irfft2(torch.fft.rfft2(torch.randn(256, 1, n, n, generator=g, dtype=torch.float64))
                           * torch.exp(-k2 / 20), s=(n, n))
    law = ColouredNoise().fit(ref)
    draws = law.sample(Conditioning(fields=ref[:256].float()), n=1, generator=torch.Generator().manual_seed(1))[0]
    p_ref, p_law = radial_spectrum(ref), radial_spectrum(draws.double())
    # each shell up to |k| = 8 pools >= 25 modes x 256 fields: a relative standard error below 2 %
    assert_close(p_law[0, 1:9], p_ref[0, 1:9], rtol=0.1, what="shell spectrum of draws vs the fitted samples")
    # the law at another resolution keeps the physical spectrum
    coarse = law.sample(Conditioning(fields=ref[:256, :, ::2, ::2].float()), generator=torch.Generator().manual_seed(2))
    assert_close(radial_spectrum(coarse[0].double())[0, 1:8], p_ref[0, 1:8], rtol=0.1, what="16^2 draws")
    with pytest.raises(ConfigError):
        ColouredNoise().sample(Conditioning(fields=ref[:2].float()))


def test_noise_draws_are_differentiable_in_the_latent():
    law = _fitted(ColouredNoise())
    z = torch.randn(2, 1, 16, 16, requires_grad=True)
    law.draw(_cond(2), z).pow(2).sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and law.reparameterised


def test_fit_ar1_recovers_rho():
    g = torch.Generator().manual_seed(0)
    rho, t_len = 0.8, 4000
    eps = torch.randn(t_len, 16, generator=g, dtype=torch.float64)
    x = torch.zeros_like(eps)
    x[0] = eps[0]
    for t in range(1, t_len):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho**2) * eps[t]
    fit = fit_ar1(x, dt=0.5)
    # 64 000 pairs: the standard error of rho is sqrt((1 - rho^2) / 64 000) = 0.0024
    assert abs(fit.rho - rho) < 0.01 * rho  # 4 standard errors, relative to rho
    assert_close(torch.tensor(fit.tau), torch.tensor(-0.5 / math.log(fit.rho)), rtol=1e-12, what="tau")
    with pytest.raises(ShapeError):
        fit_ar1(torch.zeros(2, 3))


def test_residual_law_adds_the_physics_mean_and_fits_the_noise():
    cond = _cond(4)
    physics = ADM(order=2)
    u = physics.mean(cond) + 0.01 * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    law = PhysicsPlusNoise(physics, "white").fit(cond, u)
    # 1024 residual values: rms relative standard error 2.2 %
    assert_close(law.residual.sigma, torch.tensor([0.01], dtype=torch.float64), rtol=0.1, what="fitted noise sigma")
    z = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    assert_close(law.draw(cond, z), physics.mean(cond) + law.residual.draw(cond, z), rtol=0, what="U = m(y) + r")
    rebuilt = sc.resolve("closure", law.spec())
    assert_close(rebuilt.draw(cond, z), law.draw(cond, z), rtol=0, what="rebuilt from spec")
    lp = law.log_prob(u.unsqueeze(0), cond)
    assert lp.shape == (1, 4)
    with pytest.raises(ConfigError):
        ResidualLaw("adm", WhiteNoise(channels=2))
    with pytest.raises(ConfigError):
        PhysicsPlusNoise("adm", "pink")
