"""A-posteriori fine-tuning by the score of ensemble rollouts through the differentiable coarse solver.

The recovery test makes a synthetic truth with the coarse 16^2 Navier-Stokes solver itself, forced
by the known closure ``U = s * xi`` (white Gaussian noise of std ``s``, fresh every step), and starts
a law ``U = exp(log_scale) * z`` at ``0.3 s``: fine-tuning by the fair CRPS of 4-member rollouts
must bring the scale within 15 % of ``s`` (measured with these seeds: ``1.05 s`` by the CRPS,
``1.05 s`` by the fair energy score, validation spread-skill from 0.32 to 0.9-1.0). Both scores are
proper, so the true law minimises their expectation; the tolerance covers the sampling noise of 40
steps of 4 windows of 256 pixels and of the validation selection on 4 windows. (The plain energy
score, with the ``1/M^2`` pair weight, stops at ``0.62 s`` with 4 members: the fair weight matters.)
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

import stochclosure as sc
from stochclosure.closures.base import AbstractClosureLaw
from stochclosure.errors import ConfigError, IncompatibleComponentsError
from stochclosure.systems.subgrid import NavierStokes2DSubgrid
from stochclosure.testing import assert_close
from stochclosure.training.finetune import FinetuneConfig, FinetuneWindows, ensemble_rollout, finetune, rollout_score

DT = 1e-3
TRUE_SCALE = 40.0


class ScaledNoise(AbstractClosureLaw):
    """``U = exp(log_scale) * z``: white Gaussian noise with one learnable scale (reparameterised)."""

    reparameterised: ClassVar[bool] = True

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    def latent_shape(self, cond: sc.Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        return (1, *grid)

    def draw(self, cond: sc.Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        return torch.exp(self.log_scale).to(latent) * latent


def system() -> NavierStokes2DSubgrid:
    return NavierStokes2DSubgrid(n=16, n_fine=32, nu=1e-3, dt=DT, sigma=0.0)


def synthetic_windows(n: int, records: int, record_every: int, seed: int) -> FinetuneWindows:
    """Windows of the coarse solver forced by ``TRUE_SCALE * xi`` (fresh every step)."""
    sysm = system()
    g = torch.Generator().manual_seed(seed)
    w = sysm.initial_state(n, generator=g)
    for _ in range(20):
        w = sysm.step(w, None, dt=DT)
    w0, out = w, []
    for s in range(records * record_every):
        w = sysm.step(w, TRUE_SCALE * torch.randn(w.shape, generator=g), dt=DT)
        if (s + 1) % record_every == 0:
            out.append(w)
    return FinetuneWindows(w0=w0, truth=torch.stack(out, 1), record_every=record_every)


def tiny_gaussian_law() -> Any:
    pytest.importorskip("stochclosure_neuralop")
    from stochclosure.closures import ADM, GaussianClosure, ResidualLaw

    torch.manual_seed(0)
    backbone = {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 4, "modes": 4, "layers": 1,
                "embed_dim": 4}
    return ResidualLaw(ADM.from_system(system(), order=2), GaussianClosure(backbone, noise="white"))


def test_gradient_reaches_the_law_through_twelve_solver_steps():
    law = tiny_gaussian_law()
    win = synthetic_windows(2, records=2, record_every=6, seed=1)
    w0 = win.w0.clone().requires_grad_(True)
    ens = ensemble_rollout(law, system(), w0, members=3, records=2, record_every=6, dt=DT,
                           generator=torch.Generator().manual_seed(0))
    rollout_score(ens, win.truth).backward()
    grads = {n: p.grad for n, p in law.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(law.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert w0.grad is not None and float(w0.grad.abs().sum()) > 0  # the state is not detached


def test_gradient_through_the_solver_matches_finite_differences():
    """d score / d log_scale through 10 steps equals the central difference with the same latents."""
    win = synthetic_windows(2, records=2, record_every=5, seed=2)
    w0, truth = win.w0.double(), win.truth.double()

    def score(scale: float) -> Tensor:
        law = ScaledNoise(scale).double()
        ens = ensemble_rollout(law, system(), w0, members=3, records=2, record_every=5, dt=DT,
                               generator=torch.Generator().manual_seed(4))
        return rollout_score(ens, truth), law

    loss, law = score(20.0)
    loss.backward()
    eps = 1e-4
    with torch.no_grad():
        fd = (float(score(20.0 * math.exp(eps))[0]) - float(score(20.0 * math.exp(-eps))[0])) / (2 * eps)
    # rtol 1e-3: the ensemble CRPS has kinks (sorting, |x - y|); measured 1.7e-4
    assert_close(law.log_scale.grad, torch.tensor(fd, dtype=torch.float64), rtol=1e-3, what="d score / d log s")


@pytest.mark.parametrize("score", ["crps", "energy"])
def test_finetuning_recovers_the_noise_scale(score):
    train = synthetic_windows(16, records=2, record_every=5, seed=3)
    val = synthetic_windows(4, records=2, record_every=5, seed=4)
    law = ScaledNoise(0.3 * TRUE_SCALE)
    cfg = FinetuneConfig(steps=40, members=4, windows_per_step=4, records=2, lr=0.08 if score == "crps" else 0.15,
                         score=score,
                         params="log_scale", clip=0.0, val_every=10, seed=0)
    res = finetune(law, system(), train, cfg, dt=DT, val=val, progress=False)
    scale = float(torch.exp(res.law.log_scale.detach()))
    assert_close(torch.tensor(scale), torch.tensor(TRUE_SCALE), rtol=0.15, what=f"fitted scale ({score})")
    assert [h["step"] for h in res.history] == [0, 10, 20, 30, 40]
    assert res.history[-1]["val_crps"] < res.history[0]["val_crps"]
    assert res.history[0]["val_spread_skill"] < 0.6 < res.history[-1]["val_spread_skill"]


class Stop(Exception):
    pass


def test_resume_after_interruption_gives_the_same_weights_bitwise(tmp_path):
    train = synthetic_windows(6, records=2, record_every=3, seed=5)
    val = synthetic_windows(2, records=2, record_every=3, seed=6)
    base = tiny_gaussian_law()
    cfg = FinetuneConfig(steps=5, members=2, windows_per_step=2, records=2, lr=1e-2, val_every=2, seed=1)
    whole = finetune(copy.deepcopy(base), system(), train, cfg, dt=DT, val=val, out=tmp_path / "a", progress=False)

    def stop_at_3(step: int, info: dict[str, Any]) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        finetune(copy.deepcopy(base), system(), train, cfg, dt=DT, val=val, out=tmp_path / "b", progress=False,
                 callback=stop_at_3)
    resumed = finetune(copy.deepcopy(base), system(), train, cfg, dt=DT, val=val, out=tmp_path / "b",
                       progress=False)
    assert resumed.resumed_from == 2
    a, b = whole.law.state_dict(), resumed.law.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.history == resumed.history and whole.best_step == resumed.best_step
    changed = FinetuneConfig(**{**cfg.to_dict(), "lr": 2e-2})
    with pytest.raises(ConfigError, match="lr"):
        finetune(copy.deepcopy(base), system(), train, changed, dt=DT, val=val, out=tmp_path / "b", progress=False)


def test_variance_head_only_moves_the_log_variance_rows():
    law = tiny_gaussian_law()
    before = copy.deepcopy(law.state_dict())
    win = synthetic_windows(4, records=1, record_every=3, seed=7)
    cfg = FinetuneConfig(steps=2, members=2, windows_per_step=2, records=1, lr=1e-2, params="variance", val_every=2)
    after = finetune(law, system(), win, cfg, dt=DT, progress=False).law.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all("projection" in k for k in moved)
    w = "residual.backbone.projection.fcs.1.weight"
    assert torch.equal(before[w][0], after[w][0]) and not torch.equal(before[w][1], after[w][1])


class SampledOnly(ScaledNoise):
    """The same law declaring draws that are not differentiable (like a diffusion sampler's)."""

    reparameterised: ClassVar[bool] = False


def test_a_law_without_reparameterised_draws_is_refused():
    win = synthetic_windows(2, records=1, record_every=2, seed=8)
    with pytest.raises(IncompatibleComponentsError, match="law"):
        finetune(SampledOnly(1.0), system(), win, FinetuneConfig(steps=1, windows_per_step=1, records=1), dt=DT)


@pytest.mark.parametrize("closure", ["G", "H"])
def test_the_reduced_navier_stokes_step_is_differentiable_too(closure):
    """The paper's reduced model (G or H): the gradient of the scale reaches through 10 steps, finite and nonzero."""
    from stochclosure.systems import NavierStokes2D

    sysm = NavierStokes2D(n=16, closure=closure)
    w0 = sysm.initial_state(2, generator=torch.Generator().manual_seed(0))
    law = ScaledNoise(1.0)
    ens = ensemble_rollout(law, sysm, w0, members=2, records=2, record_every=5, dt=sysm.dt,
                           generator=torch.Generator().manual_seed(1))
    rollout_score(ens, w0[:, None].repeat(1, 2, 1, 1, 1)).backward()
    assert bool(torch.isfinite(law.log_scale.grad)) and float(law.log_scale.grad.abs()) > 0


def test_hold_physics_false_recomputes_the_physics_and_holds_only_the_remainder():
    """With ``hold_physics=False`` a residual law's rollout is ``physics(w_s) + r_held`` at every step."""
    law = tiny_gaussian_law().eval()
    sysm = system()
    w0 = synthetic_windows(2, records=1, record_every=1, seed=3).w0
    hold, rho, members, steps = 3, 0.5, 2, 6
    with torch.no_grad():
        got = ensemble_rollout(law, sysm, w0, members=members, records=2, record_every=3, dt=DT, hold=hold,
                               rho=rho, generator=torch.Generator().manual_seed(4), hold_physics=False)
        whole = ensemble_rollout(law, sysm, w0, members=members, records=2, record_every=3, dt=DT, hold=hold,
                                 rho=rho, generator=torch.Generator().manual_seed(4))
        gen, w, z, out = torch.Generator().manual_seed(4), w0.repeat(members, 1, 1, 1), None, []
        for s in range(steps):
            cond = sc.Conditioning(fields=w)
            if s % hold == 0:
                xi = torch.randn((w.shape[0], *law.latent_shape(cond, (16, 16))), generator=gen, dtype=w.dtype)
                z = xi if z is None else rho * z + math.sqrt(1 - rho**2) * xi
                r = law.residual.draw(cond, z, grid=(16, 16))
            w = sysm.step(w, law.physics.mean(cond, grid=(16, 16)) + r, dt=DT)
            if (s + 1) % 3 == 0:
                out.append(w.reshape(members, *w0.shape))
    assert_close(got, torch.stack(out), rtol=1e-6, what="remainder-held rollout")
    gap = float((got - whole).abs().max() / whole.abs().max())
    assert gap > 1e-6, f"holding the physics too must change the rollout (relative gap {gap:.2e})"


def test_a_run_written_before_hold_physics_existed_resumes(tmp_path):
    train = synthetic_windows(4, records=2, record_every=3, seed=5)
    cfg = FinetuneConfig(steps=4, members=2, windows_per_step=2, records=2, lr=1e-2, val_every=2, seed=1)

    def stop_at_3(step: int, info: dict[str, Any]) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        finetune(tiny_gaussian_law(), system(), train, cfg, dt=DT, out=tmp_path, progress=False, callback=stop_at_3)
    path = tmp_path / "finetune-state.pt"
    stored = torch.load(path, weights_only=True)
    del stored["key"]["config"]["hold_physics"]            # as written before the setting existed
    torch.save(stored, path)
    assert finetune(tiny_gaussian_law(), system(), train, cfg, dt=DT, out=tmp_path, progress=False).resumed_from == 2
    with pytest.raises(ConfigError, match="hold_physics"):
        finetune(tiny_gaussian_law(), system(), train, FinetuneConfig(**{**cfg.to_dict(), "hold_physics": False}),
                 dt=DT, out=tmp_path, progress=False)
