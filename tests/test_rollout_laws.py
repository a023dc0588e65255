"""Any closure law in a rollout: latent-based laws as sample sites, Dirac laws as deterministic sites,
NoiseAR1 on the latent of every law, and the diffusion ClosureModel as a closure law."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

import stochclosure as sc
from stochclosure.closures import AbstractClosureLaw
from stochclosure.distributions import ClosureLawDistribution
from stochclosure.errors import IncompatibleComponentsError
from stochclosure.rollouts import ClosureAR1, NoiseAR1, ensemble, rollout
from stochclosure.scores.analytic import GaussianScore
from stochclosure.systems import LinearRelaxation
from stochclosure.testing import assert_close


class GaussianLaw(AbstractClosureLaw):
    """``U = a y + s z``: a heteroscedastic-free Gaussian closure with an exact density."""

    def __init__(self, a: float = 0.5, s: float = 0.2) -> None:
        super().__init__()
        self.a, self.s = a, s

    def latent_shape(self, cond, grid):
        return (1, *grid)

    def draw(self, cond, latent, *, grid=None, generator=None):
        return self.a * cond.fields + self.s * latent

    def log_prob(self, u, cond):
        z = (u - self.a * cond.fields) / self.s
        return (-0.5 * z**2 - math.log(self.s) - 0.5 * math.log(2 * math.pi)).flatten(-3).sum(-1)


class DiracLaw(AbstractClosureLaw):
    """``U = a y``: a physics-like closure without a latent."""

    def latent_shape(self, cond, grid):
        return ()

    def draw(self, cond, latent, *, grid=None, generator=None):
        return 0.5 * cond.fields

    def mean(self, cond, *, grid=None):
        return 0.5 * cond.fields


@pytest.fixture(scope="module")
def setup():
    system = LinearRelaxation(n=8)
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    return system, v0


def test_a_latent_law_is_a_sample_site_with_its_own_density(setup):
    system, v0 = setup
    law = GaussianLaw()
    tr = poutine.trace(ensemble).get_trace(system, law, v0, 3, 4, seed=0)
    site = tr.nodes["closure/1"]
    assert isinstance(site["fn"], ClosureLawDistribution) and not site["is_observed"]
    u, y = site["value"], tr.nodes["state/1"]["value"]
    expected = law.log_prob(u, sc.Conditioning(fields=y))
    assert_close(site["fn"].log_prob(u), expected, rtol=1e-6, what="site log_prob vs the law's")
    a = ensemble(system, law, v0, 3, 4, seed=0)
    b = ensemble(system, law, v0, 3, 4, seed=0)
    assert torch.equal(a.states, b.states) and float(a.spread[-1].mean()) > 0


def test_a_dirac_law_is_a_deterministic_site_and_refuses_latent_policies(setup):
    system, v0 = setup
    tr = poutine.trace(rollout).get_trace(system, DiracLaw(), v0, 2, members=2)
    site = tr.nodes["closure/0"]
    assert site["infer"].get("_deterministic") and site["is_observed"]
    assert torch.equal(site["value"], 0.5 * tr.nodes["state/0"]["value"])
    with pytest.raises(IncompatibleComponentsError, match=r"'between'.*NoiseAR1.*latent"):
        rollout(system, DiracLaw(), v0, 2, members=2, between=NoiseAR1(0.5))
    # a perturbation on top of a deterministic closure is fine
    res = rollout(system, DiracLaw(), v0, 2, members=2, between=ClosureAR1(phi=0.5, sigma=0.1))
    assert res.final.shape == (2, *v0.shape)


def test_noise_ar1_is_an_ar1_of_any_laws_latent(setup):
    system, v0 = setup
    law, rho = GaussianLaw(), 0.7
    tr = poutine.trace(ensemble).get_trace(system, law, v0, 4, 3, seed=1, between=NoiseAR1(rho), resample_every=2)
    z = None
    for s in (0, 2):
        eta = tr.nodes[f"closure_noise/{s}"]["value"]
        z = eta if z is None else rho * z + math.sqrt(1 - rho**2) * eta
        y = tr.nodes[f"state/{s}"]["value"]
        assert_close(tr.nodes[f"closure/{s}"]["value"], law.a * y + law.s * z, rtol=1e-6, what=f"draw {s}")


def test_the_closure_model_is_a_closure_law():
    model = sc.ClosureModel("vp", GaussianScore("vp", mean=0.0, std=1.0), {"type": "dpm_solver_pp_2m", "steps": 6})
    assert isinstance(model, AbstractClosureLaw)
    cond = sc.Conditioning(fields=torch.randn(3, 1, 4, 4))
    assert model.latent_shape(cond, (4, 4)) == (1, 4, 4)
    assert model.nfe_per_draw == model.sampler.nfe()
    one = model.sample(cond, generator=torch.Generator().manual_seed(0))
    assert one.shape == (1, 3, 1, 4, 4)  # the sample axis is always there
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    a, b = model.draw(cond, z), model.draw(cond, z)  # a deterministic sampler: a function of (y, z)
    assert torch.equal(a, b) and a.shape == (3, 1, 4, 4)
    ref = model.sample(cond, n=1, x_init=(z * model.prior_std())[None])[0]
    assert torch.equal(a, ref)


def test_a_float64_state_runs_with_a_float32_network(setup):
    system, v0 = setup
    net = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "width": 4, "modes": 3, "layers": 1,
                                        "embed_dim": 4, "encoder": {"type": "field", "channels": 1}})
    model = sc.ClosureModel("vp", net, {"type": "dpm_solver_pp_2m", "steps": 3})
    assert next(net.parameters()).dtype == torch.float32
    res = ensemble(system, model, v0.double(), 2, 2, seed=0)   # the score runs in float32, the rollout in float64
    assert res.states.dtype == torch.float64 and res.closures[0].dtype == torch.float64
    assert bool(torch.isfinite(res.states).all())
    single = ensemble(system, model, v0, 2, 2, seed=0)
    assert_close(res.states.float(), single.states, rtol=1e-3, what="float64 vs float32 rollout of one network")


def test_the_deterministic_closure_works_for_any_law_with_a_latent(setup):
    system, v0 = setup
    law = GaussianLaw()
    a = ensemble(system, law, v0, 3, 3, seed=0, deterministic=4, deterministic_seed=2)
    b = ensemble(system, law, v0, 3, 3, seed=9, deterministic=4, deterministic_seed=2)
    assert torch.equal(a.states, b.states)                                  # no dependence on the rollout seed
    assert float(a.spread.abs().max()) <= 1e-6 * float(a.states.abs().max())  # equal states, equal closures
    gen = torch.Generator().manual_seed(2)
    z = torch.stack([torch.randn(1, 8, 8, generator=gen) for _ in range(4)]).mean(0)
    assert_close(a.closures[0][0], law.a * v0 + law.s * z, rtol=1e-6, what="mean of 4 frozen draws")
    with pytest.raises(IncompatibleComponentsError, match="'deterministic'"):
        rollout(system, DiracLaw(), v0, 2, deterministic=2)


class _ConvLaw(AbstractClosureLaw):
    """A law whose network (one float32 convolution) does not cast its inputs itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")

    def latent_shape(self, cond, grid):
        return (1, *grid)

    def draw(self, cond, latent, *, grid=None, generator=None):
        return self.conv(cond.fields) + 0.01 * latent


def test_a_float32_law_closes_a_float64_rollout():
    """A law with float32 parameters sees the condition in float32; the draw comes back in the state's dtype."""
    system = sc.resolve("system", {"type": "navier_stokes_2d", "n": 16, "closure": "G"})
    state0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0].double()
    res = ensemble(system, _ConvLaw(), state0, 2, members=2, seed=0)
    assert res.members.dtype == torch.float64 and bool(torch.isfinite(res.members).all())


@pytest.mark.parametrize("policy", ["hold", "noise_ar1"])
def test_physics_every_step_holds_only_the_remainder_of_a_residual_law(setup, policy):
    """``U_s = physics(y_s) + (U_draw - physics(y_draw))`` between draws; the draws are the law's."""
    from stochclosure.closures import ResidualLaw
    from stochclosure.rollouts import Hold

    system, v0 = setup
    law = ResidualLaw(DiracLaw(), GaussianLaw(a=0.1, s=0.3))
    between = Hold(physics_every_step=True) if policy == "hold" else NoiseAR1(0.6, physics_every_step=True)
    tr = poutine.trace(ensemble).get_trace(system, law, v0, 7, 2, seed=3, between=between, resample_every=3)
    for s in range(7):
        y = tr.nodes[f"state/{s}"]["value"]
        d = 3 * (s // 3)
        u_draw, y_draw = tr.nodes[f"closure/{d}"]["value"], tr.nodes[f"state/{d}"]["value"]
        expected = 0.5 * y + (u_draw - 0.5 * y_draw)
        nxt = tr.nodes[f"state/{s + 1}"]["value"]
        assert_close(nxt, y + system.dt * (-system.gamma * y + expected), rtol=1e-6, what=f"step {s}")
    held = ensemble(system, law, v0, 7, 2, seed=3, between=type(between)(**{
        k: v for k, v in vars(between).items() if k != "physics_every_step"}), resample_every=3)
    gap = float((held.states[-1] - tr.nodes["state/7"]["value"]).abs().max())
    assert gap > 1e-6 * float(held.states[-1].abs().max()), "holding the whole draw must differ"


def test_physics_every_step_refuses_a_law_without_a_physics_part(setup):
    from stochclosure.errors import ConfigError
    from stochclosure.rollouts import Hold

    system, v0 = setup
    with pytest.raises(IncompatibleComponentsError, match="physics_every_step"):
        ensemble(system, GaussianLaw(), v0, 2, 2, seed=0, between=Hold(physics_every_step=True))
    with pytest.raises(ConfigError, match="physics_every_step"):
        NoiseAR1(0.5, physics_every_step="yes")
