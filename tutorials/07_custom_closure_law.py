# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Your own closure law: a 30-line Gaussian closure, trained, saved, reloaded and rolled out
#
# A *closure law* is any conditional distribution `p(U | y)` of the closure term `U` given the
# condition `y` (the coarse state, its history, measurements). The diffusion `ClosureModel` is
# one; stochclosure also ships a deterministic network (`deterministic`) and a heteroscedastic
# Gaussian (`gaussian`) on any score-operator backbone. They all implement one small interface,
# `stochclosure.closures.AbstractClosureLaw`:
#
# | method | what it does |
# |---|---|
# | `latent_shape(cond, grid)` | shape of the standard-normal latent `z` of one draw (`()` for a Dirac law) |
# | `draw(cond, latent, *, grid, generator)` | one closure per batch member, `U = draw(y, z)` |
# | `mean(cond)`, `log_prob(u, cond)` | optional closed forms |
# | `loss(cond, u)` | what the `Trainer` minimises (a law trains by its own loss) |
#
# Writing the draw as a function of a latent is what lets a rollout correlate draws in time
# (an AR(1) in latent space) and what makes the law *reparameterised*: differentiable in its
# parameters for a fixed `z`.
#
# This tutorial writes a law from scratch for the Navier–Stokes closure `G = nu Lap(omega) +
# 2 sigma dW` (a diffusion term plus white noise): a Gaussian whose mean is a learned 3 x 3
# periodic stencil of the coarse vorticity and whose std is one learned number. It registers
# the law by name, checks it against the closure-law contract, trains it with the same
# `Trainer` as the built-in models on a tiny generated data set, scores its draws, saves it to
# a safe checkpoint (safetensors + JSON naming the registered law), reloads it and runs it in
# the coarse solver (`ensemble`, `Predictive`, `stochclosure rollout`).
#
# Run it as a script (`python tutorials/07_custom_closure_law.py [--smoke] [--out DIR]`) or as a
# notebook with jupytext. `--smoke` uses fewer trajectories and steps (for CI).

# %%
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

import stochclosure as sc  # noqa: E402
from stochclosure import metrics  # noqa: E402
from stochclosure.closures import AbstractClosureLaw  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--smoke", action="store_true", help="tiny settings for CI")
parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "_out" / "07_custom_closure_law"))
args, _ = parser.parse_known_args(None if "ipykernel" not in sys.modules else [])
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
SMOKE = args.smoke
torch.manual_seed(0)
T_START = time.perf_counter()
results: dict = {"smoke": SMOKE}

# %% [markdown]
# ## 1. The law, in 30 lines
#
# `U = S * omega + b + exp(log_s) z`, with `S` a learned 3 x 3 stencil applied with periodic
# padding, `b` a bias and `z ~ N(0, I)` white. The density is Gaussian, so the loss is the exact
# negative log-likelihood. A law is an `nn.Module`: its parameters are saved with it, and the
# constructor's defaults are what a checkpoint rebuilds it with (this one has none to record).

# %%
class StencilGaussian(AbstractClosureLaw):
    """U | y ~ N(S * y + b, exp(2 log_s)) per pixel, S a learned periodic 3 x 3 stencil."""

    reparameterised = True  # draw() is differentiable in the parameters for a fixed latent

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.stencil = torch.nn.Parameter(torch.zeros(channels, channels, 3, 3))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.log_s = torch.nn.Parameter(torch.zeros(channels))

    def latent_shape(self, cond: sc.Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        return (self.channels, *grid)

    def mean(self, cond: sc.Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        y = F.pad(cond.fields, (1, 1, 1, 1), mode="circular")
        return F.conv2d(y, self.stencil, self.bias)

    def std(self) -> Tensor:
        return self.log_s.exp().view(1, -1, 1, 1)

    def draw(self, cond, latent, *, grid=None, generator=None) -> Tensor:
        mu = self.mean(cond)
        z = torch.randn(mu.shape, generator=generator) if latent is None else latent
        return mu + self.std() * z

    def log_prob(self, u: Tensor, cond: sc.Conditioning) -> Tensor:
        normal = torch.distributions.Normal(self.mean(cond), self.std())
        return normal.log_prob(u).sum(dim=(-3, -2, -1))

    def loss(self, cond: sc.Conditioning, u: Tensor) -> Tensor:
        return -self.log_prob(u, cond).mean() / u[0].numel()


# %% [markdown]
# ## 2. Register it and check the contract
#
# `sc.register("closure", name, cls)` puts the class in the registry under a name, so a
# checkpoint or a YAML file can say `{"type": "stencil_gaussian"}` and get this class back
# without importing anything by path (a checkpoint naming an unregistered law is refused). For
# a package, the same line is an entry point in the group `stochclosure.closures`.
#
# The contract checks what every rollout relies on: shapes of `sample` and `draw`, a draw that
# is a deterministic function of the latent, batch members that do not influence each other,
# finite values, and that the spec rebuilds the law through the registry.

# %%
sc.register("closure", "stencil_gaussian", StencilGaussian, overwrite=True)


def check_law(law: AbstractClosureLaw, cond: sc.Conditioning, grid: tuple[int, ...]) -> None:
    """The closure-law contract (``stochclosure.testing.check_closure_law`` where installed)."""
    from stochclosure import testing
    from stochclosure.checkpoint import law_spec
    from stochclosure.testing import assert_close

    shipped = getattr(testing, "check_closure_law", None)
    if shipped is not None:
        shipped(law, cond, grid=grid)
        return
    b = cond.batch_size
    u = law.sample(cond, n=3, generator=torch.Generator().manual_seed(0), grid=grid)
    assert u.shape == (3, b, law.channels, *grid) and bool(torch.isfinite(u).all())
    z = torch.randn((b, *law.latent_shape(cond, grid)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one = law.draw(cond, z, grid=grid)
        assert torch.equal(one, law.draw(cond, z, grid=grid)), "a fixed latent gives a fixed draw"
        alone = law.draw(cond.index(slice(1, 2)), z[1:2], grid=grid)
    assert_close(alone, one[1:2], rtol=1e-5, what="member alone vs in a batch")
    assert type(sc.resolve("closure", law_spec(law))) is type(law)


# %% [markdown]
# ## 3. A tiny data set
#
# `generate` simulates 2-D Navier–Stokes at 32² and stores the coarse vorticity and the true
# closure `G` at 16². The training items are `(omega, G)` pairs; the test split is held out.

# %%
from stochclosure.data.generate import generate  # noqa: E402
from stochclosure.data.hdf5 import ClosureH5Dataset  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="sc07_"))
n_traj = 6 if SMOKE else 16
data_cfg = {"system": {"n": 32, "closure": "G"}, "trajectories": n_traj, "batch_size": n_traj // 2,
            "spinup_steps": 20, "record_every": 2, "records": 8 if SMOKE else 20, "resolutions": [16],
            "closures": ["G"], "obs_grid": 0, "split": {"train": 0.5, "val": 0.17, "test": 0.33}}
t0 = time.perf_counter()
path = generate("navier_stokes_2d", data_cfg, work / "ns_G.h5", progress=False)
train = ClosureH5Dataset(path, split="train", closure="G", obs=False)
test = ClosureH5Dataset(path, split="test", closure="G", obs=False)
target, cond = test.collate([test[i] for i in range(len(test))])
print(f"{len(train)} training and {len(test)} test items in {time.perf_counter() - t0:.1f} s")
results["data"] = {"train_items": len(train), "test_items": len(test)}

law = StencilGaussian()
check_law(law, cond.index(slice(0, 4)), (16, 16))
results["contract_passed"] = True

# %% [markdown]
# ## 4. Train it with the standard `Trainer`
#
# The `Trainer` takes any closure law: it calls the law's `loss(cond, u)`, and keeps everything
# else it does for the diffusion model (Adam, warm-up and cosine schedule, gradient clipping,
# an EMA of the weights, seeded data order, checkpoints, exact resume, validation scores of the
# law's draws: `val_r2`, `val_crps`, `val_spread_skill`, `val_coverage`).

# %%
steps = 400 if SMOKE else 1500
val = ClosureH5Dataset(path, split="val", closure="G", obs=False)
t0 = time.perf_counter()
fit = sc.Trainer(law, train, val, batch_size=16, max_steps=steps, lr=0.05, warmup_steps=10, ema_rel_std=0.05,
                 val_every=steps, val_draws=8, checkpoint_dir=work / "run", progress=False).fit()
print(f"trained {steps} steps in {fit.seconds:.1f} s; validation:",
      {k: round(v, 3) for k, v in fit.history[-1].items() if k.startswith("val_")})
results["training"] = {"steps": steps, "seconds": fit.seconds, "val_loss": fit.history[-1]["val_loss"],
                       "val_spread_skill": fit.history[-1]["val_spread_skill"]}

# %% [markdown]
# ## 5. Score the draws on held-out data
#
# `metrics.offline_scores` scores an ensemble of draws against the truth: R² of the ensemble
# mean, fair CRPS, energy score, spread-skill ratio (1 for a calibrated ensemble) and the
# coverage of the central 80 % interval (0.8 when calibrated). No closure at all (`U = 0`) is
# the floor; the learned stencil should look like a (scaled) discrete Laplacian, the diffusion
# part of `G`.

# %%
with torch.no_grad():
    draws = law.sample(cond, n=16, generator=torch.Generator().manual_seed(0))
scores = metrics.offline_scores(draws, target)
zero = metrics.offline_scores(torch.zeros_like(draws[:2]), target)
print("stencil Gaussian:", {k: round(v, 3) for k, v in scores.items()})
print("no closure:      ", {k: round(v, 3) for k, v in zero.items() if k in ("r2", "crps")})
stencil = law.stencil.detach()[0, 0]
print("learned stencil (relative to its centre):\n", (stencil / -stencil[1, 1]).numpy().round(2))
results["offline"] = {"stencil_gaussian": scores, "no_closure": {"r2": zero["r2"], "crps": zero["crps"]}}
results["stencil_relative"] = (stencil / -stencil[1, 1]).tolist()

# %% [markdown]
# ## 6. Save, reload, draw the same closures
#
# `save_model` writes the registered name and the law's configuration as JSON and the weights
# as safetensors; `load_model` rebuilds the law through the registry (never from an import
# path, never by unpickling). The same seed gives the same draws from the reloaded law.

# %%
from stochclosure.checkpoint import load_model, save_model  # noqa: E402

ck = save_model(law, work / "stencil_gaussian")
back = load_model(ck)
with torch.no_grad():
    again = back.sample(cond, n=16, generator=torch.Generator().manual_seed(0))
identical = bool(torch.equal(again, draws))
print("reloaded:", type(back).__name__, "| identical draws:", identical)
results["reload"] = {"identical_draws": identical, "config": json.loads((ck / "config.json").read_text())["model"]}

# %% [markdown]
# ## 7. In the coarse solver: `ensemble`, `Predictive` and `stochclosure rollout`
#
# A registered law plugs into rollouts exactly like the diffusion model: every draw is a
# `pyro.sample` site `closure/{s}`, so `pyro.infer.Predictive` sees it, and the command line
# loads it from its checkpoint. Here the reloaded law closes the 16² reduced Navier–Stokes model
# (closure `G`) from a held-out coarse state, with a fresh draw every step.

# %%
from pyro.infer import Predictive  # noqa: E402

from stochclosure.checkpoint import save_tensors  # noqa: E402
from stochclosure.cli import main as stochclosure_cli  # noqa: E402

coarse = sc.resolve("system", {"type": "navier_stokes_2d", "n": 16, "closure": "G"})
state0 = cond.fields[0].double()  # (1, 16, 16) held-out coarse vorticity
n_roll = 10 if SMOKE else 50
ens = sc.ensemble(coarse, back, state0, n_roll, members=8, seed=0)
spread = float(ens.members[-1].std(0).mean())
print(f"ensemble: states {tuple(ens.members.shape)} (time, members, C, y, x); mean spread at the end {spread:.2e}")

pred = Predictive(lambda: sc.rollout(coarse, back, state0, 3), num_samples=4)()
print("Predictive sites:", sorted(k for k in pred if k.startswith("closure/")), tuple(pred["closure/1"].shape))

save_tensors(work / "state0.safetensors", {"state": state0})
(work / "rollout.yaml").write_text(
    f"model: {ck}\nsystem: {{type: navier_stokes_2d, n: 16, closure: G}}\n"
    f"initial: {{path: {work / 'state0.safetensors'}}}\nn_steps: {n_roll}\nmembers: 4\nout: {work / 'ens.safetensors'}\n")
code = stochclosure_cli(["rollout", "--config", str(work / "rollout.yaml"), "--no-progress"])
print("stochclosure rollout exit code:", code)
results["rollouts"] = {"ensemble_shape": list(ens.members.shape), "final_spread": spread,
                       "predictive_closure_shape": list(pred["closure/1"].shape), "cli_exit": code,
                       "finite": bool(torch.isfinite(ens.members).all())}

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
panels = [(target[0, 0], "true G"), (law.mean(cond.index(slice(0, 1)))[0, 0].detach(), "law mean"),
          (draws[0, 0, 0], "one draw"), (draws[:, 0, 0].std(0), "spread of 16 draws")]
for ax, (img, title) in zip(axes, panels):
    im = ax.imshow(img.numpy(), cmap="RdBu_r" if "spread" not in title else "viridis")
    ax.set_title(title)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.8)
fig.tight_layout()
fig.savefig(OUT / "custom_law_draws.png", dpi=110)
plt.close(fig)

results["figures"] = sorted(p.name for p in OUT.glob("*.png"))
results["seconds_total"] = time.perf_counter() - T_START
assert all(math.isfinite(v) for v in scores.values())
(OUT / "results.json").write_text(json.dumps(results, indent=2))
sc.registry.get_registry("closure").unregister("stencil_gaussian")
print(f"wrote {OUT} in {results['seconds_total']:.1f} s")
