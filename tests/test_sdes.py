import math

import pytest
import torch

import stochclosure as sc
from stochclosure.sdes import VESDE, VPSDE, ExpVESDE, SubVPSDE
from stochclosure.testing import assert_close, check_sde, registered_examples


@pytest.mark.parametrize("name,sde", list(registered_examples("sde")))
def test_registered_sdes_pass_contract(name, sde):
    check_sde(sde)


def test_research_ve_matches_reference_values():
    sde = ExpVESDE(26.0)
    _, s = sde.marginal_coefficients(torch.tensor([1.0, 0.1], dtype=torch.float64))
    # sigma_t^2 = (26^(2t) - 1) / (2 ln 26)  (REFERENCE section 3)
    assert s[0].item() == pytest.approx(math.sqrt((26**2 - 1) / (2 * math.log(26))), rel=1e-12)
    assert s[1].item() == pytest.approx(math.sqrt((26**0.2 - 1) / (2 * math.log(26))), rel=1e-12)
    assert sde.diffusion(torch.tensor([0.5], dtype=torch.float64)).item() == pytest.approx(26**0.5)


@pytest.mark.parametrize("sde", [VESDE(), ExpVESDE(), VPSDE(), SubVPSDE()])
def test_marginal_matches_monte_carlo_of_forward_sde(sde):
    """Simulate the forward SDE with fine Euler steps; compare with marginal()."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    x, n, t_end = x0.clone(), 2000, 0.5
    dt = t_end / n
    for i in range(n):
        t = torch.full((x.shape[0],), i * dt, dtype=torch.float64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(
            x.shape, generator=g, dtype=torch.float64)
    mean, std = sde.marginal(x0[:1], torch.tensor([t_end], dtype=torch.float64))
    se = std.item() / math.sqrt(x.shape[0])
    assert abs(x.mean().item() - mean.item()) < 4 * se + 1e-3
    assert x.std().item() == pytest.approx(std.item(), rel=0.03)


def test_vp_marginal_is_variance_preserving():
    sde = VPSDE()
    a, s = sde.marginal_coefficients(torch.linspace(0.01, 1, 5, dtype=torch.float64))
    assert_close(a**2 + s**2, torch.ones(5, dtype=torch.float64), rtol=1e-12, what="alpha^2 + sigma^2")


def test_subvp_variance_below_vp():
    t = torch.linspace(0.01, 1, 5, dtype=torch.float64)
    assert bool((SubVPSDE().marginal_coefficients(t)[1] < VPSDE().marginal_coefficients(t)[1]).all())


@pytest.mark.parametrize("spec", ["ve", "ve_exp", "vp", "subvp"])
def test_config_round_trip_through_registry(spec):
    sde = sc.resolve("sde", spec)
    again = sc.resolve("sde", sde.spec())
    assert type(again) is type(sde) and again.config == sde.config


def test_truncated_prior_uses_data_std():
    sde = ExpVESDE()
    t = torch.tensor([0.1], dtype=torch.float64)
    assert sde.prior_std(t, 0.0).item() == pytest.approx(sde.marginal_coefficients(t)[1].item())
    assert sde.prior_std(t, 1.0).item() == pytest.approx(math.sqrt(1 + sde.marginal_coefficients(t)[1].item() ** 2))


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min"),
    ({"eps": 2.0}, "eps"),
    ({"T": -1.0}, "'T'"),
])
def test_bad_sde_parameters(kwargs, match):
    with pytest.raises(sc.ConfigError, match=match):
        VESDE(**kwargs)
